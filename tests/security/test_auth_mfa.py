"""TOTP second factor: required for clinicians and staff on /care/, /admin/ and the API token; optional for patients."""

from __future__ import annotations

import re
from datetime import timedelta
from io import StringIO
from urllib.parse import parse_qs, urlparse

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient

from api.auth import ERR_OTP_NOT_ENROLLED, ERR_OTP_REQUIRED
from tests.conftest import World, otp_verified_login, totp_code

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery"


def token(username: str, **extra: str) -> tuple[int, dict[str, object]]:
    response = APIClient().post("/api/v1/auth/token", {"username": username, "password": PASSWORD, **extra}, format="json")
    return response.status_code, response.json()


def past_the_otp_throttle(device: TOTPDevice) -> None:
    """django-otp delays a device's next check after a wrong code (1 s, doubling); travel past that delay."""
    TOTPDevice.objects.filter(pk=device.pk).update(throttling_failure_timestamp=timezone.now() - timedelta(minutes=10))


def password_step(username: str) -> Client:
    client = Client()
    response = client.post("/care/login/", {"username": username, "password": PASSWORD})
    assert response.status_code == 302 and response["Location"].startswith("/care/otp/"), response
    return client


# --- API token ------------------------------------------------------------------------------

def test_clinician_without_an_authenticator_gets_no_token(world: World) -> None:
    status, body = token("dr-dan")
    assert status == 403 and body["detail"] == ERR_OTP_NOT_ENROLLED


def test_clinician_token_needs_the_current_code(world: World) -> None:
    device = TOTPDevice.objects.create(user=world.clinician, name="phone", confirmed=True)
    status, body = token("dr-dan")
    assert status == 400 and body["otp"] == [ERR_OTP_REQUIRED], body
    status, body = token("dr-dan", otp="000000" if totp_code(device) != "000000" else "111111")
    assert status == 401
    # Right after a wrong code the device is throttled: even the right code is refused for a moment.
    assert token("dr-dan", otp=totp_code(device))[0] == 401
    past_the_otp_throttle(device)
    status, body = token("dr-dan", otp=totp_code(device))
    assert status == 200 and {"access", "refresh"} <= set(body)
    # The same code cannot be replayed.
    assert token("dr-dan", otp=totp_code(device))[0] == 401


def test_unconfirmed_device_does_not_count(world: World) -> None:
    device = TOTPDevice.objects.create(user=world.staff, name="half-set-up", confirmed=False)
    status, body = token("sam", otp=totp_code(device))
    assert status == 403 and body["detail"] == ERR_OTP_NOT_ENROLLED


def test_patients_and_caregivers_sign_in_without_a_code(world: World) -> None:
    assert token("alice")[0] == 200
    assert token("carol")[0] == 200


def test_a_patient_who_enrolled_must_use_the_code(world: World) -> None:
    device = TOTPDevice.objects.create(user=world.alice.user, name="phone", confirmed=True)
    assert token("alice")[0] == 400
    assert token("alice", otp=totp_code(device))[0] == 200


def test_wrong_codes_count_towards_the_lockout(world: World) -> None:
    device = TOTPDevice.objects.create(user=world.clinician, name="phone", confirmed=True)
    wrong = "000000" if totp_code(device) != "000000" else "111111"
    for _ in range(settings.AXES_FAILURE_LIMIT):
        assert token("dr-dan", otp=wrong)[0] in (401, 429)
    status, _ = token("dr-dan", otp=totp_code(device))
    assert status == 429


# --- Care-team pages -------------------------------------------------------------------------

def test_first_sign_in_enrols_an_authenticator_then_opens_the_pages(world: World) -> None:
    client = password_step("dr-dan")
    response = client.get("/care/otp/?next=/care/")
    assert response.status_code == 302 and response["Location"].startswith("/care/otp/enrol/")
    page = client.get(response["Location"]).content.decode()
    uri = re.search(r'href="(otpauth://totp/[^"]+)"', page)
    assert uri is not None
    secret = parse_qs(urlparse(uri.group(1).replace("&amp;", "&")).query)["secret"][0]
    assert f'<code id="otp-secret">{secret}</code>' in page
    device = TOTPDevice.objects.get(user=world.clinician, confirmed=False)
    assert client.get("/care/").status_code == 302  # still not verified
    bad = client.post("/care/otp/enrol/", {"code": "12345x", "next": "/care/"})
    assert bad.status_code == 200 and "not valid" in bad.content.decode()
    past_the_otp_throttle(device)
    response = client.post("/care/otp/enrol/", {"code": totp_code(device), "next": "/care/"})
    assert response.status_code == 302 and response["Location"] == "/care/"
    assert client.get("/care/").status_code == 200
    device.refresh_from_db()
    assert device.confirmed
    # Once confirmed, the secret is never shown again: the enrol page sends to the code step.
    later = password_step("dr-dan")
    assert later.get("/care/otp/enrol/")["Location"].startswith("/care/otp/")
    assert secret not in later.get("/care/otp/").content.decode()


def test_password_alone_opens_no_care_page(world: World) -> None:
    TOTPDevice.objects.create(user=world.clinician, name="phone", confirmed=True)
    client = password_step("dr-dan")
    for path in ("/care/", f"/care/patients/{world.alice.pk}/", f"/care/patients/{world.alice.pk}/agp.pdf"):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/care/otp/?next="), path


def test_wrong_code_is_refused_and_next_cannot_leave_the_site(world: World) -> None:
    device = TOTPDevice.objects.create(user=world.clinician, name="phone", confirmed=True)
    client = password_step("dr-dan")
    wrong = "000000" if totp_code(device) != "000000" else "111111"
    response = client.post("/care/otp/", {"code": wrong})
    assert response.status_code == 200 and "not valid" in response.content.decode()
    past_the_otp_throttle(device)
    response = client.post("/care/otp/", {"code": totp_code(device), "next": "https://evil.example/"})
    assert response.status_code == 302 and response["Location"] == "/care/"


def test_otp_step_locks_out_after_repeated_wrong_codes(world: World) -> None:
    device = TOTPDevice.objects.create(user=world.clinician, name="phone", confirmed=True)
    client = password_step("dr-dan")
    wrong = "000000" if totp_code(device) != "000000" else "111111"
    statuses = [client.post("/care/otp/", {"code": wrong}).status_code for _ in range(settings.AXES_FAILURE_LIMIT)]
    assert statuses[-1] == 429
    # The session was ended: even the right code now needs the password (which is locked out) again.
    assert client.get("/care/")["Location"].startswith("/care/login/")


# --- Admin ---------------------------------------------------------------------------------

def test_admin_refuses_a_staff_session_without_the_second_factor(world: World) -> None:
    world.staff.is_superuser = True
    world.staff.save()
    client = Client()
    client.force_login(world.staff)
    assert client.get("/admin/")["Location"].startswith("/admin/login/")
    verified = Client()
    otp_verified_login(verified, world.staff)
    assert verified.get("/admin/").status_code == 200


def test_admin_login_form_needs_the_code(world: World) -> None:
    world.staff.is_superuser = True
    world.staff.save()
    device = TOTPDevice.objects.create(user=world.staff, name="phone", confirmed=True)
    client = Client()
    response = client.post("/admin/login/?next=/admin/", {"username": "sam", "password": PASSWORD})
    assert response.status_code == 200 and client.get("/admin/").status_code == 302
    response = client.post("/admin/login/?next=/admin/", {"username": "sam", "password": PASSWORD,
                                                           "otp_device": device.persistent_id, "otp_token": totp_code(device)})
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200


# --- Operator command ---------------------------------------------------------------------

def test_otp_enrol_command_issues_a_confirmed_authenticator_once(world: World) -> None:
    out = StringIO()
    call_command("otp_enrol", "dr-dan", stdout=out)
    text = out.getvalue()
    assert "otpauth://totp/" in text and "secret=" in text
    device = TOTPDevice.objects.get(user=world.clinician)
    assert device.confirmed
    assert token("dr-dan", otp=totp_code(device))[0] == 200
    with pytest.raises(CommandError, match="already has a confirmed authenticator"):
        call_command("otp_enrol", "dr-dan", stdout=StringIO())
    call_command("otp_enrol", "dr-dan", "--replace", stdout=StringIO())
    assert not TOTPDevice.objects.filter(pk=device.pk).exists()
    with pytest.raises(CommandError, match="No user"):
        call_command("otp_enrol", "nobody", stdout=StringIO())
