"""seed_demo --json: the logins it prints work, and running it twice does not fail."""

from __future__ import annotations

import hashlib
import json
from io import StringIO

import pytest
from django.core.management import call_command
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient

from glucoscope.patients.models import User
from glucoscope.readings.models import GlucoseReading
from tests.conftest import totp_code

pytestmark = pytest.mark.django_db


def seed() -> dict:  # type: ignore[type-arg]
    out = StringIO()
    call_command("seed_demo", "--json", stdout=out, stderr=StringIO())
    return json.loads(out.getvalue())


def test_seed_demo_prints_working_logins_and_is_rerunnable() -> None:
    seed()
    data = seed()
    assert set(data) == {"clinician", "patients", "vendor"}
    assert [set(p) for p in data["patients"]] == [{"id", "username", "password", "nightscout_secret", "device_serial"}] * 3
    counts = [GlucoseReading.objects.filter(patient_id=p["id"]).count() for p in data["patients"]]
    assert counts[0] > 1500 and counts[1] > 1500 and counts[2] == 0  # a week of 5-min readings, then a clean start

    client = APIClient()
    # Clinicians sign in with a second factor (docs/security.md): enrol one as an operator would.
    clinician = User.objects.get(username=data["clinician"]["username"])
    device = TOTPDevice.objects.create(user=clinician, name="phone", confirmed=True)
    token = client.post("/api/v1/auth/token", {**data["clinician"], "otp": totp_code(device)}, format="json").json()["access"]
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert {p["id"] for p in client.get("/api/v1/patients").json()["results"]} == {p["id"] for p in data["patients"]}

    third = data["patients"][2]
    vendor = APIClient()
    vendor.credentials(HTTP_AUTHORIZATION=f"Api-Key {data['vendor']['api_key']}")
    response = vendor.post("/api/v1/readings", {"device": third["device_serial"], "timestamp": "2026-01-01T00:00:00Z",
                                                "value": 100, "unit": "mg/dL"}, format="json")
    assert response.json()["accepted"] == 1

    nightscout = APIClient()
    nightscout.credentials(HTTP_API_SECRET=hashlib.sha1(third["nightscout_secret"].encode()).hexdigest())
    assert len(nightscout.get("/nightscout/api/v1/entries.json").json()) == 1
