"""Request budgets per person, per vendor key, per Nightscout credential and per anonymous address: 429 + Retry-After.

Rates are lowered per test through the REST_FRAMEWORK setting; api.throttling reads them on every request
(DRF's own classes would keep the rates they read at import time).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.utils import timezone
from rest_framework.test import APIClient

from glucoscope.patients import services as patient_services
from tests.conftest import World, api_key_client, bearer, nightscout_client
from tests.integration.conftest import real_services  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


@pytest.fixture
def rates(settings):  # type: ignore[no-untyped-def]
    """Sets some scopes' rates for this test only, keeping the others."""

    def set_rates(**scopes: str) -> None:
        rest = dict(django_settings.REST_FRAMEWORK)
        rest["DEFAULT_THROTTLE_RATES"] = {**rest["DEFAULT_THROTTLE_RATES"], **scopes}
        settings.REST_FRAMEWORK = rest

    return set_rates


def assert_throttled(response: Any) -> None:
    assert response.status_code == 429, response.content
    retry_after = int(response["Retry-After"])
    assert 0 < retry_after <= 60
    body = response.json()
    assert "throttled" in body["detail"].lower() or "try again" in body["detail"].lower()
    assert set(body) <= {"detail", "code"}  # nothing about keys, counters or other callers


def test_per_person_budget(world: World, rates) -> None:  # type: ignore[no-untyped-def]
    rates(user="2/min")
    alice = bearer(world.alice.user)
    assert [alice.get("/api/v1/me").status_code for _ in range(2)] == [200, 200]
    assert_throttled(alice.get("/api/v1/me"))
    assert_throttled(bearer(world.alice.user).get("/api/v1/patients"))  # a new token is the same person
    assert bearer(world.bob.user).get("/api/v1/me").status_code == 200  # bob has his own budget


def test_per_vendor_key_budget(world: World, rates) -> None:  # type: ignore[no-untyped-def]
    rates(vendor_key="2/min")
    _, second_key = patient_services.vendor_api_key_create(vendor=world.vendor, name="second")

    def post(key: str, minutes: int) -> Any:
        body = {"patient": world.alice.pk, "device": "ALICE-1", "value": 100, "unit": "mg/dL",
                "timestamp": (timezone.now() - timedelta(minutes=minutes)).isoformat()}
        return api_key_client(key).post("/api/v1/readings", body, format="json")

    assert [post(world.vendor_key, m).status_code for m in (5, 10)] == [200, 200]
    assert_throttled(post(world.vendor_key, 15))
    # Same vendor, other key: its own budget (a key under rotation does not starve the new one).
    assert post(second_key, 20).status_code == 200
    # People are not counted against vendor budgets.
    assert bearer(world.alice.user).get("/api/v1/me").status_code == 200


def test_per_nightscout_credential_budget(world: World, rates) -> None:  # type: ignore[no-untyped-def]
    rates(nightscout="2/min")
    old_secret = world.alice_ns_secret
    new_secret = patient_services.nightscout_credential_rotate(patient=world.alice, grace=timedelta(hours=1)).secret
    uploader = nightscout_client(old_secret)
    assert [uploader.get("/nightscout/api/v1/entries.json").status_code for _ in range(2)] == [200, 200]
    assert_throttled(uploader.get("/nightscout/api/v1/entries.json"))
    assert nightscout_client(new_secret).get("/nightscout/api/v1/entries.json").status_code == 200
    assert nightscout_client(world.bob_ns_secret).get("/nightscout/api/v1/entries.json").status_code == 200


def test_per_anonymous_address_budget_ignores_spoofed_forwarded_for(world: World, rates) -> None:  # type: ignore[no-untyped-def]
    rates(anon="2/min")
    first = APIClient(REMOTE_ADDR="203.0.113.5")
    assert [first.get("/nightscout/api/v1/status.json").status_code for _ in range(2)] == [200, 200]
    assert_throttled(first.get("/nightscout/api/v1/status.json"))
    # A client cannot escape by inventing X-Forwarded-For (no trusted proxy configured).
    assert_throttled(first.get("/nightscout/api/v1/status.json", HTTP_X_FORWARDED_FOR="198.51.100.77"))
    assert APIClient(REMOTE_ADDR="203.0.113.6").get("/nightscout/api/v1/status.json").status_code == 200
    # Signed-in people do not use the anonymous budget.
    assert bearer(world.alice.user).get("/api/v1/me", REMOTE_ADDR="203.0.113.5").status_code == 200


def test_forwarded_address_is_used_behind_a_trusted_proxy(world: World, rates, settings) -> None:  # type: ignore[no-untyped-def]
    rates(anon="1/min")
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = APIClient(REMOTE_ADDR="10.0.0.2")
    assert proxy.get("/nightscout/api/v1/status.json", HTTP_X_FORWARDED_FOR="203.0.113.5").status_code == 200
    assert_throttled(proxy.get("/nightscout/api/v1/status.json", HTTP_X_FORWARDED_FOR="203.0.113.5"))
    # A spoofed left-most entry does not help: the proxy's own (right-most) entry is the client.
    assert_throttled(proxy.get("/nightscout/api/v1/status.json", HTTP_X_FORWARDED_FOR="1.2.3.4, 203.0.113.5"))
    assert proxy.get("/nightscout/api/v1/status.json", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 200


def test_sign_in_budget_per_address(world: World, rates) -> None:  # type: ignore[no-untyped-def]
    rates(login="2/min")
    client = APIClient(REMOTE_ADDR="203.0.113.8")
    body = {"username": "alice", "password": "correct-horse-battery"}
    assert [client.post("/api/v1/auth/token", body, format="json").status_code for _ in range(2)] == [200, 200]
    assert_throttled(client.post("/api/v1/auth/token", {**body, "username": "bob"}, format="json"))


def test_rates_come_from_the_environment() -> None:
    import os
    import subprocess
    import sys

    code = "import glucoscope.settings as s; r = s.REST_FRAMEWORK['DEFAULT_THROTTLE_RATES']; print(r['vendor_key'], r['nightscout'], r['anon'])"
    env = {**os.environ, "THROTTLE_VENDOR_KEY_RATE": "7/min", "THROTTLE_NIGHTSCOUT_RATE": "8/min", "THROTTLE_ANON_RATE": "9/min"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split()[-3:] == ["7/min", "8/min", "9/min"]


@pytest.mark.integration
@pytest.mark.usefixtures("real_services")
def test_on_redis_each_request_is_one_counter_hit_that_expires_with_its_window(  # type: ignore[no-untyped-def]
    world: World, rates, settings,
) -> None:
    prefix = f"throttle-test-{uuid.uuid4().hex}"
    settings.CACHES = {"default": {"BACKEND": "glucoscope.cache.FailOpenRedisCache", "LOCATION": settings.REDIS_URL,
                                   "KEY_PREFIX": prefix}}
    rates(user="2/min")
    alice = bearer(world.alice.user)
    assert [alice.get("/api/v1/me").status_code for _ in range(2)] == [200, 200]
    assert_throttled(alice.get("/api/v1/me"))
    assert bearer(world.bob.user).get("/api/v1/me").status_code == 200
    server = redis.Redis.from_url(settings.REDIS_URL)
    counters = {key: int(server.get(key) or 0) for key in server.scan_iter(f"{prefix}:*")}
    try:
        # One counter per person and minute: alice's counted all three requests, bob's one.
        assert sorted(counters.values()) == [1, 3]
        assert all(0 < server.ttl(key) <= 61 for key in counters)
    finally:
        server.delete(*counters)
