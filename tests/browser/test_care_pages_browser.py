"""The care-team pages in a real browser: Playwright driving Debian's chromium.

Log in, open the dashboard, sort and filter, open a patient, send them a message and download the AGP PDF. With
GLUCOSCOPE_SCREENSHOTS=<dir> (``make screenshots``) the dashboard and patient page are saved as PNGs.
Skips with a message when chromium or playwright is missing; .ci/run installs chromium.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from forecasting.stratification import synthetic_patients
from glucoscope.patients import services as patient_services
from glucoscope.patients.models import Role
from tests.analytics.helpers import add_readings
from tests.conftest import totp_code
from tests.factories import CareTeamFactory, PatientFactory, UserFactory, consent
from tests.web.conftest import add_forecast, add_glucotype, refresh_counts

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
PASSWORD = "correct-horse-battery"
PEOPLE = [("Ada", "Lovelace"), ("Grace", "Hopper"), ("Alan", "Turing"), ("Rosalind", "Franklin"),
          ("Edsger", "Dijkstra"), ("Barbara", "Liskov")]

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing: apt-get install -y chromium"),
]


@pytest.fixture
def clinic(settings):  # type: ignore[no-untyped-def]
    # Playwright's sync API runs an event loop in this thread; the ORM calls here are still synchronous.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    team = CareTeamFactory(name="Diabetes clinic")
    clinician = UserFactory(username="dr-demo", role=Role.CLINICIAN, first_name="Dana", last_name="Doctor")
    patient_services.care_team_add_clinician(care_team=team, clinician=clinician)
    TOTPDevice.objects.create(user=clinician, name="phone", confirmed=True)  # the second sign-in step
    x, _ = synthetic_patients(len(PEOPLE), days=14, seed=11, kinds=[2, 0, 1, 2, 0, 1])
    patients = []
    for i, ((first, last), row) in enumerate(zip(PEOPLE, x, strict=True)):
        patient = PatientFactory(user=UserFactory(username=f"{first.lower()}", first_name=first, last_name=last))
        consent(patient, team)
        values = [float(v) for v in row]
        if i == 0:
            values[-12:] = [130 - 6 * k for k in range(12)]  # falling towards a low now
        if i == 3:
            for k in range(len(values)):
                if 24 <= k % 288 < 36:  # a nightly dip around 02:00-03:00
                    values[k] = 52.0 + (k % 3) * 6
        end = timezone.now() - (timedelta(hours=5) if i == 4 else timedelta(minutes=2))  # one silent sensor
        add_readings(patient, values, end=end)
        patients.append(patient)
    add_forecast(patients[0], below_70_30min=0.78, start=62.0, slope_per_min=-0.15)
    add_forecast(patients[1], below_70_30min=0.04)
    add_glucotype(patients, ["severe", "low", "moderate", "severe", "low", "moderate"])
    refresh_counts()
    yield patients
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def test_login_dashboard_sort_patient_and_pdf(live_server, clinic, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shots = os.environ.get("GLUCOSCOPE_SCREENSHOTS")
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
        page = context.new_page()
        page.goto(f"{live_server.url}/care/")
        assert "/care/login/" in page.url  # anonymous: sent to sign in
        page.fill("#id_username", "dr-demo")
        page.fill("#id_password", PASSWORD)
        page.click("#sign-in")
        page.wait_for_selector("#verify-code")  # the password alone opens nothing: TOTP code next
        page.fill("#id_code", totp_code(TOTPDevice.objects.get(user__username="dr-demo")))
        page.click("#verify-code")
        page.wait_for_selector("#triage")
        rows = page.locator("#triage tbody tr")
        assert rows.count() == len(PEOPLE)
        # Default order is by need: the patient with a predicted low comes first.
        assert rows.first.locator("a.patient-link").inner_text() == "Ada Lovelace"
        assert "predicted_low" in rows.first.inner_text()
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=f"{shots}/dashboard.png", full_page=True)

        page.click("#sort-last_reading")
        page.wait_for_url("**sort=last_reading**")
        assert page.locator("th.sorted a").get_attribute("id") == "sort-last_reading"
        # Oldest reading first: the silent sensor (flagged stale) leads.
        first = page.locator("#triage tbody tr").first
        assert "Edsger Dijkstra" in first.inner_text() and "stale" in first.inner_text()

        page.select_option("#filter-glucotype", "severe")
        page.click("form.filters button")
        page.wait_for_url("**glucotype=severe**")
        assert page.locator("#triage tbody tr").count() == 2

        page.locator("a.patient-link", has_text="Ada Lovelace").click()
        page.wait_for_selector("#latest-value")
        assert "mg/dL" in page.inner_text("#latest-value")
        assert "not a diagnosis" in page.content()
        for chart in ("#recent-chart", "#agp-chart"):
            page.wait_for_function(f"document.querySelector('{chart}').complete && document.querySelector('{chart}').naturalWidth > 0")
        if shots:
            page.screenshot(path=f"{shots}/patient.png", full_page=True)

        page.fill("#message-text", "Your readings are falling: please check and eat if low.")
        page.click("#send-message")
        page.wait_for_selector(".message-success")
        assert "Message queued" in page.inner_text(".message-success")

        with page.expect_download() as info:
            page.click("#agp-pdf")
        target = tmp_path / info.value.suggested_filename
        info.value.save_as(target)
        assert target.name.endswith(".pdf") and target.read_bytes().startswith(b"%PDF")
        browser.close()
