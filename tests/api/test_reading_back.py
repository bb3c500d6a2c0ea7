"""Reading back: paginated readings with units, summary, patient list, me, auth tokens."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from api.query import ERR_RANGE_ORDER
from glucoscope.readings import validation
from glucoscope.readings.batches import Uploader, reading_batch_ingest
from glucoscope.readings.models import ReadingSource
from tests.conftest import World

pytestmark = pytest.mark.django_db


def seed(world: World, count: int, *, step_minutes: int = 5) -> None:
    now = timezone.now()
    items = [
        {"timestamp": (now - timedelta(minutes=step_minutes * i)).isoformat(), "value": 100 + i, "unit": "mg/dL", "trend": "Flat"}
        for i in range(count)
    ]
    from django.test import TestCase

    # Run the post-commit processing (summary refresh) as the worker would.
    with TestCase.captureOnCommitCallbacks(execute=True):
        reading_batch_ingest(uploader=Uploader(source=ReadingSource.APP, patient_id=world.alice.pk), items=items)


def test_readings_page_through_the_range_in_time_order_without_gaps_or_repeats(world: World) -> None:
    seed(world, 250)
    client = world.client("patient")
    url: str | None = f"/api/v1/patients/{world.alice.pk}/readings?page_size=100"
    seen: list[str] = []
    while url:
        body = client.get(url).json()
        seen += [r["timestamp"] for r in body["results"]]
        url = body["next"]
    assert len(seen) == 250 == len(set(seen))
    assert seen == sorted(seen)


def test_readings_come_back_in_mmol_when_asked_or_preferred(world: World) -> None:
    seed(world, 1)
    client = world.client("patient")
    url = f"/api/v1/patients/{world.alice.pk}/readings"
    assert client.get(url).json()["results"][0]["value"] == 100.0
    assert client.get(url + "?unit=mmol/L").json()["results"][0] == pytest.approx(
        {**client.get(url + "?unit=mmol/L").json()["results"][0], "value": 5.6, "unit": "mmol/L"}
    )
    world.alice.preferred_unit = "mmol/L"
    world.alice.save()
    assert client.get(url).json()["unit"] == "mmol/L"


def test_page_size_is_capped(world: World, settings) -> None:  # type: ignore[no-untyped-def]
    settings.READINGS_MAX_PAGE_SIZE = 10
    seed(world, 30)
    body = world.client("patient").get(f"/api/v1/patients/{world.alice.pk}/readings?page_size=5000").json()
    assert len(body["results"]) == 10


@pytest.mark.parametrize("query, field, message", [
    ("unit=stone", "unit", validation.ERR_UNIT),
    ("start=yesterday", "start", validation.ERR_TIMESTAMP_FORMAT),
    ("start=2026-01-01T00:00:00", "start", validation.ERR_TIMESTAMP_NAIVE),
    ("start=2026-02-01T00:00:00Z&end=2026-01-01T00:00:00Z", "end", ERR_RANGE_ORDER),
])
def test_bad_query_parameters_are_400_naming_the_parameter(world: World, query: str, field: str, message: str) -> None:
    response = world.client("patient").get(f"/api/v1/patients/{world.alice.pk}/readings?{query}")
    assert response.status_code == 400
    assert response.json() == {field: [message]}


def test_ranges_longer_than_the_maximum_are_refused(world: World) -> None:
    response = world.client("patient").get(
        f"/api/v1/patients/{world.alice.pk}/readings?start=2025-01-01T00:00:00Z&end=2026-01-01T00:00:00Z"
    )
    assert response.status_code == 400 and "start" in response.json()


def test_summary_reports_latest_reading_age_trend_and_24h_count(world: World) -> None:
    seed(world, 300)  # 25 h of readings
    body = world.client("patient").get(f"/api/v1/patients/{world.alice.pk}/summary").json()
    assert body["latest"]["value"] == 100.0
    assert body["trend"] == "Flat"
    assert 0 <= body["latest_age_seconds"] < 60
    assert body["readings_last_24h"] == 288


def test_summary_of_a_patient_without_readings_is_empty_not_an_error(world: World) -> None:
    body = world.client("patient").get(f"/api/v1/patients/{world.alice.pk}/summary").json()
    assert body["latest"] is None and body["readings_last_24h"] == 0


@pytest.mark.parametrize("role, visible", [
    ("patient", {"alice"}), ("caregiver", {"alice"}), ("clinician", {"alice"}), ("other_clinician", {"bob"}),
    ("revoked_clinician", set()), ("staff", set()),
])
def test_patient_list_shows_only_what_the_caller_may_see(world: World, role: str, visible: set[str]) -> None:
    body = world.client(role).get("/api/v1/patients").json()
    assert {p["username"] for p in body["results"]} == visible


def test_me_returns_the_callers_profile_and_no_secrets(world: World) -> None:
    body = world.client("patient").get("/api/v1/me").json()
    assert body["username"] == "alice" and body["role"] == "patient" and body["patient"]["id"] == world.alice.pk
    assert "password" not in body


def test_login_gives_access_and_refresh_tokens_that_work(world: World) -> None:
    from rest_framework.test import APIClient

    client = APIClient()
    response = client.post("/api/v1/auth/token", {"username": "alice", "password": "correct-horse-battery"}, format="json")
    assert response.status_code == 200
    tokens = response.json()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    assert client.get("/api/v1/me").status_code == 200
    refreshed = APIClient().post("/api/v1/auth/token/refresh", {"refresh": tokens["refresh"]}, format="json")
    assert refreshed.status_code == 200 and "access" in refreshed.json()
    # Refresh tokens rotate: the old one is blacklisted after use.
    assert APIClient().post("/api/v1/auth/token/refresh", {"refresh": tokens["refresh"]}, format="json").status_code == 401


@pytest.mark.parametrize("body", [{"username": "alice", "password": "wrong"}, {"username": "alice"}, {}])
def test_bad_logins_are_refused_with_field_errors(world: World, body: dict[str, str]) -> None:
    from rest_framework.test import APIClient

    response = APIClient().post("/api/v1/auth/token", body, format="json")
    assert response.status_code in (400, 401)


def test_repeated_failed_logins_are_throttled_with_retry_after(world: World, settings) -> None:  # type: ignore[no-untyped-def]
    from rest_framework.test import APIClient

    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {
        **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "login": "3/min"}}
    client = APIClient()
    # api.throttling reads the rate on every request, so the setting above is all it takes.
    statuses = [client.post("/api/v1/auth/token", {"username": "alice", "password": "x"}, format="json").status_code for _ in range(4)]
    assert statuses[-1] == 429
    assert client.post("/api/v1/auth/token", {"username": "alice", "password": "x"}, format="json").has_header("Retry-After")


def test_expired_access_tokens_are_refused(world: World) -> None:
    from rest_framework.test import APIClient
    from rest_framework_simplejwt.tokens import AccessToken

    token = AccessToken.for_user(world.alice.user)
    token.set_exp(lifetime=timedelta(seconds=-1))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get("/api/v1/me").status_code == 401


@pytest.mark.parametrize("path", ["readings", "summary", "treatments", "forecast", "forecasts"])
@pytest.mark.parametrize("query, field", [("unit=stone", "unit"), ("start=yesterday", "start"), ("end=2026-13-45T00:00:00Z", "end")])
def test_every_patient_endpoint_names_the_bad_parameter(world: World, path: str, query: str, field: str) -> None:
    response = world.client("patient").get(f"/api/v1/patients/{world.alice.pk}/{path}?{query}")
    takes_range = path not in ("summary", "forecast")
    takes_unit = path != "treatments"  # treatments carry grams and units of insulin, not glucose
    if (field == "unit" and not takes_unit) or (field != "unit" and not takes_range):
        assert response.status_code == 200
    else:
        assert response.status_code == 400 and field in response.json()


@pytest.mark.parametrize("path", ["/api/v1/auth/token", "/api/v1/readings", "/api/v1/treatments", "/api/v1/me/consents"])
def test_every_post_endpoint_refuses_oversized_bodies(world: World, path: str, settings) -> None:  # type: ignore[no-untyped-def]
    settings.MAX_REQUEST_BODY_BYTES = 1_000
    response = world.client("patient").post(path, data='{"pad": "' + "x" * 2_000 + '"}', content_type="application/json")
    assert response.status_code == 413


@pytest.mark.parametrize("path", ["/api/v1/auth/token", "/api/v1/treatments", "/api/v1/me/consents", "/api/v1/me/caregivers"])
def test_every_post_endpoint_refuses_malformed_json(world: World, path: str) -> None:
    response = world.client("patient").post(path, data="{oops", content_type="application/json")
    assert response.status_code == 400
