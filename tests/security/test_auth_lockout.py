"""Repeated failed sign-ins lock the username out from that address (django-axes) on the API, /care/ and /admin/."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from api.auth import ERR_LOCKED_OUT
from tests.conftest import World

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery"


def api_sign_in(username: str, password: str, address: str = "203.0.113.7") -> tuple[int, dict[str, str], str | None]:
    response = APIClient(REMOTE_ADDR=address).post(
        "/api/v1/auth/token", {"username": username, "password": password}, format="json"
    )
    return response.status_code, response.json(), response.headers.get("Retry-After")


def fail_api(username: str, times: int, address: str = "203.0.113.7") -> None:
    for _ in range(times):
        assert api_sign_in(username, "wrong-password-123", address)[0] == 401


def test_api_locks_out_after_the_limit_with_429_json_and_retry_after(world: World) -> None:
    fail_api("alice", settings.AXES_FAILURE_LIMIT)
    status, body, retry_after = api_sign_in("alice", PASSWORD)
    assert status == 429
    assert str(body["detail"]).startswith(ERR_LOCKED_OUT)
    assert retry_after is not None and 0 < int(retry_after) <= settings.AXES_COOLOFF_TIME * 3600
    assert "password" not in str(body) and "alice" not in str(body)


def test_lockout_is_per_username_and_address(world: World) -> None:
    fail_api("alice", settings.AXES_FAILURE_LIMIT)
    assert api_sign_in("alice", PASSWORD, address="198.51.100.9")[0] == 200  # alice elsewhere
    assert api_sign_in("bob", PASSWORD)[0] == 200  # someone else at the same address


def test_fewer_failures_than_the_limit_do_not_lock_and_success_resets_the_count(world: World) -> None:
    fail_api("alice", settings.AXES_FAILURE_LIMIT - 1)
    assert api_sign_in("alice", PASSWORD)[0] == 200
    fail_api("alice", settings.AXES_FAILURE_LIMIT - 1)
    assert api_sign_in("alice", PASSWORD)[0] == 200  # the success cleared the earlier failures


def test_lockout_ends_after_the_cool_off(world: World) -> None:
    fail_api("alice", settings.AXES_FAILURE_LIMIT)
    assert api_sign_in("alice", PASSWORD)[0] == 429
    # Time travel: the failures happened just over one cool-off ago.
    AccessAttempt.objects.filter(username="alice").update(
        attempt_time=timezone.now() - timedelta(hours=settings.AXES_COOLOFF_TIME, seconds=5)
    )
    assert api_sign_in("alice", PASSWORD)[0] == 200


def test_cool_off_comes_from_the_environment() -> None:
    import os
    import subprocess
    import sys

    code = "import glucoscope.settings as s; print(s.AXES_COOLOFF_TIME, s.AXES_FAILURE_LIMIT)"
    env = {**os.environ, "AXES_COOLOFF_HOURS": "0.5", "AXES_FAILURE_LIMIT": "4"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                         check=True).stdout.split()
    assert out[-2:] == ["0.5", "4"]


def test_care_team_sign_in_locks_out_with_a_page_and_retry_after(world: World) -> None:
    for _ in range(settings.AXES_FAILURE_LIMIT):
        Client().post("/care/login/", {"username": "dr-dan", "password": "wrong-password-123"})
    response = Client().post("/care/login/", {"username": "dr-dan", "password": PASSWORD})
    assert response.status_code == 429 and int(response["Retry-After"]) > 0
    assert 'id="locked-out"' in response.content.decode()
    # The API shares the same record: the clinician is locked out there too, from this address.
    status, _, _ = api_sign_in("dr-dan", PASSWORD, address="127.0.0.1")
    assert status == 429


def test_admin_sign_in_locks_out(world: World) -> None:
    for _ in range(settings.AXES_FAILURE_LIMIT):
        Client().post("/admin/login/", {"username": "sam", "password": "wrong-password-123", "otp_token": "000000"})
    response = Client().post("/admin/login/", {"username": "sam", "password": PASSWORD, "otp_token": "000000"})
    assert response.status_code == 429
