"""Who may open each care-team page: clinicians of a consenting team only; everyone else is refused."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from glucoscope.web.views import ERR_NOT_CLINICIAN_LOGIN
from tests.analytics.helpers import add_readings, synthetic_days
from tests.conftest import World, totp_code
from tests.web.conftest import session_client

pytestmark = pytest.mark.django_db

PATIENT_PAGES = ["", "recent.svg", "agp.svg", "agp.pdf"]


def users(world: World) -> dict[str, object]:
    return {"anonymous": None, "patient": world.alice.user, "caregiver": world.caregiver, "staff": world.staff,
            "clinician": world.clinician, "other_clinician": world.other_clinician,
            "revoked_clinician": world.revoked_clinician}


# Anonymous: login redirect. Non-clinicians: 403. Clinicians outside alice's consenting teams: 404.
PATIENT_EXPECTED = {"anonymous": 302, "patient": 403, "caregiver": 403, "staff": 403, "clinician": 200,
                    "other_clinician": 404, "revoked_clinician": 404}
DASHBOARD_EXPECTED = {**PATIENT_EXPECTED, "other_clinician": 200, "revoked_clinician": 200}


@pytest.mark.parametrize("page", PATIENT_PAGES)
def test_patient_pages(world: World, page: str) -> None:
    add_readings(world.alice, synthetic_days(1))
    failures = []
    for role, user in users(world).items():
        response = session_client(user).get(f"/care/patients/{world.alice.pk}/{page}")  # type: ignore[arg-type]
        if response.status_code != PATIENT_EXPECTED[role]:
            failures.append(f"{role}: expected {PATIENT_EXPECTED[role]}, got {response.status_code}")
        if role == "anonymous":
            assert response["Location"].startswith("/care/login/?next=")
    assert not failures, failures


def test_dashboard(world: World) -> None:
    for role, user in users(world).items():
        response = session_client(user).get("/care/")  # type: ignore[arg-type]
        assert response.status_code == DASHBOARD_EXPECTED[role], role


def test_dashboard_lists_only_consenting_patients_of_the_clinicians_teams(world: World) -> None:
    html = session_client(world.clinician).get("/care/").content.decode()
    assert f'data-patient="{world.alice.pk}"' in html and f'data-patient="{world.bob.pk}"' not in html
    assert f'data-patient="{world.alice.pk}"' not in session_client(world.revoked_clinician).get("/care/").content.decode()


def test_unknown_patient_is_404_not_500(world: World) -> None:
    assert session_client(world.clinician).get("/care/patients/999999/").status_code == 404


def test_clinician_signs_in_with_password_and_totp_code_and_patients_cannot(world: World) -> None:
    device = TOTPDevice.objects.create(user=world.clinician, name="phone", confirmed=True)
    client = Client()
    response = client.post("/care/login/", {"username": "dr-dan", "password": "correct-horse-battery"})
    assert response.status_code == 302 and response["Location"] == "/care/otp/?next=%2Fcare%2F"
    assert client.get("/care/")["Location"].startswith("/care/otp/")  # the password alone opens nothing
    response = client.post("/care/otp/", {"code": totp_code(device), "next": "/care/"})
    assert response.status_code == 302 and response["Location"] == "/care/"
    assert client.get("/care/").status_code == 200
    refused = Client().post("/care/login/", {"username": "alice", "password": "correct-horse-battery"})
    assert refused.status_code == 200 and ERR_NOT_CLINICIAN_LOGIN in refused.content.decode()
    assert client.post("/care/logout/").status_code == 302
    assert client.get("/care/").status_code == 302


def test_pages_are_not_cached(world: World) -> None:
    response = session_client(world.clinician).get(f"/care/patients/{world.alice.pk}/")
    assert "no-store" in response["Cache-Control"] or "no-cache" in response["Cache-Control"]


def test_repeated_failed_sign_ins_are_refused_even_with_the_right_password(world: World) -> None:
    for _ in range(settings.AXES_FAILURE_LIMIT):
        Client().post("/care/login/", {"username": "dr-dan", "password": "wrong-password-123"})
    response = Client().post("/care/login/", {"username": "dr-dan", "password": "correct-horse-battery"})
    assert response.status_code == 429 and "Too many failed sign-ins" in response.content.decode()
    assert int(response["Retry-After"]) > 0


@pytest.mark.parametrize("model", ["forecasting/glucotypemodel", "forecasting/glucotypeassignment", "forecasting/patientpersonalisation",
                                   "web/patientdaycounts"])
def test_staff_see_the_analytics_tables_read_only_in_the_admin(world: World, model: str) -> None:
    world.staff.is_superuser = True
    world.staff.save()
    client = session_client(world.staff)
    assert client.get(f"/admin/{model}/").status_code == 200
    assert client.get(f"/admin/{model}/add/").status_code == 403
