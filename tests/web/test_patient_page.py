"""Patient page content, the charts and the AGP PDF."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from django.utils.html import escape

from forecasting.models import PatientPersonalisation
from glucoscope.web.views import MESSAGE_SENT
from notifications.models import Kind, Notification
from notifications.services import ERR_MESSAGE_TEXT, MAX_MESSAGE_LENGTH
from tests.analytics.helpers import add_readings, synthetic_days
from tests.conftest import World
from tests.web.conftest import add_forecast, add_glucotype, session_client

pytestmark = pytest.mark.django_db


def test_patient_page_shows_latest_reading_agp_indicators_and_glucotype(world: World) -> None:
    add_readings(world.alice, [*synthetic_days(2)[:-1], 144.1])
    add_forecast(world.alice, below_70_30min=0.42)
    add_glucotype([world.alice], ["moderate"])
    html = session_client(world.clinician).get(f"/care/patients/{world.alice.pk}/", {"unit": "mg/dL"}).content.decode()
    assert 'id="latest-value">144 <small>mg/dL</small>' in html
    assert "42%" in html and "not a diagnosis" in html
    assert "Insufficient data for a standard AGP" in html  # 2 days < 14: shown, with the warning
    assert "Beck 2019" in html and "Lachin 2022" in html and "1.64 (95% CI 1.51–1.78)" in html
    assert 'id="glucotype">moderate' in html
    assert "Notifications sent" in html and "Message the patient" in html


def test_the_forecast_line_says_whether_the_patient_has_their_own_layer(world: World) -> None:
    forecast = add_forecast(world.alice, below_70_30min=0.1)
    client = session_client(world.clinician)
    assert "personalised to this patient" not in client.get(f"/care/patients/{world.alice.pk}/").content.decode()
    now = timezone.now()
    forecast.personalisation = PatientPersonalisation.objects.create(
        patient=world.alice, model_version=forecast.model_version, fitted_at=now, data_start=now - timedelta(days=8),
        data_end=now, days_of_data=8.0, fit_windows=1800, check_windows=460, population_loss=0.2, personal_loss=0.18,
        output_layer=bytes(4 * 9288),
    )
    forecast.save(update_fields=["personalisation"])
    assert "personalised to this patient" in client.get(f"/care/patients/{world.alice.pk}/").content.decode()


def test_mmol_view_converts_the_latest_reading(world: World) -> None:
    add_readings(world.alice, [90.08])
    html = session_client(world.clinician).get(f"/care/patients/{world.alice.pk}/", {"unit": "mmol/L"}).content.decode()
    assert 'id="latest-value">5.0 <small>mmol/L</small>' in html


def test_charts_are_svg_and_the_report_is_a_pdf(world: World) -> None:
    add_readings(world.alice, synthetic_days(3))
    add_forecast(world.alice, below_70_30min=0.1)
    client = session_client(world.clinician)
    for chart in ("recent.svg", "agp.svg"):
        response = client.get(f"/care/patients/{world.alice.pk}/{chart}")
        assert response["Content-Type"] == "image/svg+xml" and b"<svg" in response.content
    pdf = client.get(f"/care/patients/{world.alice.pk}/agp.pdf")
    assert pdf["Content-Type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
    assert "attachment" in pdf["Content-Disposition"]


def test_empty_patient_renders(world: World) -> None:
    client = session_client(world.clinician)
    assert client.get(f"/care/patients/{world.alice.pk}/").status_code == 200
    assert client.get(f"/care/patients/{world.alice.pk}/agp.pdf").content.startswith(b"%PDF")
    assert b"<svg" in client.get(f"/care/patients/{world.alice.pk}/recent.svg").content


def test_clinician_sends_the_patient_a_message_through_notifications(world: World) -> None:
    client = session_client(world.clinician)
    response = client.post(f"/care/patients/{world.alice.pk}/message", {"text": "Please call the clinic."}, follow=True)
    assert escape(MESSAGE_SENT) in response.content.decode()
    sent = Notification.objects.get(patient=world.alice, kind=Kind.CARE_MESSAGE)
    assert sent.created_by == world.clinician and sent.details["text"] == "Please call the clinic."
    empty = client.post(f"/care/patients/{world.alice.pk}/message", {"text": "  "}, follow=True)
    assert escape(ERR_MESSAGE_TEXT.format(limit=MAX_MESSAGE_LENGTH)) in empty.content.decode()
    assert Notification.objects.filter(patient=world.alice).count() == 1


def test_message_access_and_method(world: World) -> None:
    url = f"/care/patients/{world.alice.pk}/message"
    assert session_client(world.other_clinician).post(url, {"text": "hi"}).status_code == 404
    assert session_client(world.alice.user).post(url, {"text": "hi"}).status_code == 403
    assert session_client(None).post(url, {"text": "hi"}).status_code == 302
    assert session_client(world.clinician).get(url).status_code == 405
    assert not Notification.objects.exists()


def test_message_form_needs_the_csrf_token(world: World) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.clinician)
    assert client.post(f"/care/patients/{world.alice.pk}/message", {"text": "hi"}).status_code == 403
