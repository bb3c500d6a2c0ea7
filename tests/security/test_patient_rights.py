"""Patient rights: export everything (JSON, zip of CSVs), streamed; delete the account and every row about it."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from typing import Any

import pytest
from django.db.models import Model
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from forecasting.models import Forecast, ForecastEvent, GlucotypeAssignment, PatientPersonalisation, RiskAssessment
from glucoscope.audit.models import AuditEntry
from glucoscope.patients import account
from glucoscope.patients.models import CaregiverLink, CareTeamConsent, Device, NightscoutCredential, Patient, User
from glucoscope.readings.models import GlucoseReading, NightscoutDocument, PatientOutbox, PatientSummary, Treatment
from notifications.models import AlertEpisode, DeviceToken, Notification, Preference, Reminder
from tests.conftest import World, bearer
from tests.security.seed_data import seed_patient_data

PASSWORD = "correct-horse-battery"  # tests/factories.py


def _body(response: Any) -> bytes:
    assert response.streaming, "the export must be streamed"
    return b"".join(response.streaming_content)


@pytest.mark.django_db
def test_json_export_holds_every_table_of_the_patient_and_nothing_of_anyone_else(world: World) -> None:
    seeded = seed_patient_data(world.alice, readings=7, tag="alice")
    seed_patient_data(world.bob, readings=3, tag="bob")
    response = world.client("patient").get("/api/v1/me/export")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"].startswith('attachment; filename="glucoscope-export-')
    assert response["Cache-Control"] == "no-store"
    raw = _body(response)
    document = json.loads(raw)
    assert document["profile"]["username"] == "alice" and document["units"]["glucose"] == "mg/dL"
    counts = {name: len(document[name]) for name in (t.name for t in account.TABLES)}
    assert counts["readings"] == 7
    for name in ("treatments", "nightscout_documents", "forecasts", "personalisations", "risk_assessments", "forecast_events",
                 "glucotype_assignments", "notifications", "alert_episodes", "reminders", "notification_preferences",
                 "devices", "push_devices", "consents", "caregivers"):
        assert counts[name] >= 1, name
    assert document["readings"][0]["glucose_mgdl"] == 106 and document["treatments"][0]["carbs_g"] == 30
    assert document["forecasts"][0]["forecast_id"] == seeded.forecast.pk
    assert {c["care_team"] for c in document["consents"]} == set(world.alice.consents.values_list("care_team__name", flat=True))
    # Nothing of bob's, and no credentials: not the push token, not the Nightscout secret.
    text = raw.decode()
    for leak in ("bob", seeded.push_token, world.alice_ns_secret, world.alice.user.password):
        assert leak not in text, leak
    # The export itself is in the audit log as an export, and audited entries are part of the export.
    entry = AuditEntry.objects.get(patient_id=world.alice.pk, route="v1:my-export")
    assert entry.action == "export"
    again = json.loads(_body(world.client("patient").get("/api/v1/me/export?format=json")))
    assert any(e["route"] == "v1:my-export" and e["action"] == "export" for e in again["audit_entries"])


@pytest.mark.django_db
def test_csv_export_is_a_zip_with_one_csv_per_table_and_units_in_the_headers(world: World) -> None:
    seed_patient_data(world.alice, readings=4, tag="alice")
    response = world.client("patient").get("/api/v1/me/export", {"format": "csv"})
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"].endswith('.zip"')
    archive = zipfile.ZipFile(io.BytesIO(_body(response)))
    assert archive.testzip() is None
    assert set(archive.namelist()) == {"profile.csv", *(f"{t.name}.csv" for t in account.TABLES)}
    readings = list(csv.DictReader(io.StringIO(archive.read("readings.csv").decode())))
    assert len(readings) == 4
    assert {"timestamp_utc", "glucose_mgdl", "trend_rate_mgdl_per_min"} <= set(readings[0])
    assert readings[0]["glucose_mgdl"] == "103.0" and readings[0]["timestamp_utc"].endswith("+00:00")
    treatments = list(csv.DictReader(io.StringIO(archive.read("treatments.csv").decode())))
    assert treatments[0]["carbs_g"] == "30.0" and "insulin_units" in treatments[0]
    profile = list(csv.DictReader(io.StringIO(archive.read("profile.csv").decode())))
    assert profile[0]["username"] == "alice" and "target_low_mgdl" in profile[0]


@pytest.mark.django_db
def test_the_export_streams_in_chunks_rather_than_one_body(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    seed_patient_data(world.alice, readings=25, tag="alice")
    monkeypatch.setattr(account, "CHUNK_ROWS", 4)
    chunks = list(account.export_json_chunks(patient=world.alice))
    reading_chunks = [c for c in chunks if c.count(b'"glucose_mgdl"') == 4]
    assert len(reading_chunks) >= 5  # 25 readings leave in pieces of 4, never all at once
    assert len(json.loads(b"".join(chunks))["readings"]) == 25
    zip_chunks = list(account.export_csv_zip_chunks(patient=world.alice))
    assert len(zip_chunks) > len(account.TABLES)
    assert zipfile.ZipFile(io.BytesIO(b"".join(zip_chunks))).read("readings.csv").count(b"\n") == 26


@pytest.mark.django_db
def test_export_format_errors_name_the_parameter(world: World) -> None:
    response = world.client("patient").get("/api/v1/me/export", {"format": "xml"})
    assert response.status_code == 400 and "format" in response.json()
    assert world.client("clinician").get("/api/v1/me/export").status_code == 403


def _patient_rows(patient: Patient, user: User) -> dict[str, int]:
    """How many rows of each kind belong to this patient."""
    by_patient: dict[str, type[Model]] = {
        "readings": GlucoseReading, "treatments": Treatment, "nightscout_documents": NightscoutDocument,
        "forecasts": Forecast, "forecast_events": ForecastEvent, "glucotype_assignments": GlucotypeAssignment,
        "personalisations": PatientPersonalisation,
        "notifications": Notification, "alert_episodes": AlertEpisode, "reminders": Reminder,
        "preferences": Preference, "consents": CareTeamConsent, "caregiver_links": CaregiverLink,
        "nightscout_credentials": NightscoutCredential, "outbox": PatientOutbox, "summary": PatientSummary,
        "devices": Device,
    }
    counts = {name: model.objects.filter(patient_id=patient.pk).count() for name, model in by_patient.items()}  # type: ignore[attr-defined]
    counts["risk_assessments"] = RiskAssessment.objects.filter(forecast__patient_id=patient.pk).count()
    counts["push_devices"] = DeviceToken.objects.filter(user_id=user.pk).count()
    counts["patient"] = Patient.objects.filter(pk=patient.pk).count()
    counts["user"] = User.objects.filter(pk=user.pk).count()
    return counts


@pytest.mark.django_db
def test_deleting_the_account_removes_every_row_of_that_patient_only(world: World) -> None:
    seed_patient_data(world.alice, tag="alice")
    seed_patient_data(world.bob, tag="bob")
    alice, alice_user, bob = world.alice, world.alice.user, world.bob
    before_alice = _patient_rows(alice, alice_user)
    before_bob = _patient_rows(bob, bob.user)
    assert all(before_alice.values()), before_alice  # the test would prove nothing about an empty kind of row
    refresh = RefreshToken.for_user(alice_user)
    access = str(refresh.access_token)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")

    response = client.delete("/api/v1/me", {"password": PASSWORD}, format="json")

    assert response.status_code == 204, response.content
    after_alice = _patient_rows(alice, alice_user)
    assert set(after_alice.values()) == {0}, after_alice
    assert _patient_rows(bob, bob.user) == before_bob
    # The CGM device of alice's vendor is gone; bob's, and the vendors themselves, stay.
    assert not Device.objects.filter(serial="ALICE-1").exists() and Device.objects.filter(serial="BOB-1").exists()
    # Old tokens stop working: the access token (401) and the refresh token (blacklisted, 401).
    assert client.get("/api/v1/me").status_code == 401
    refreshed = APIClient().post("/api/v1/auth/token/refresh", {"refresh": str(refresh)}, format="json")
    assert refreshed.status_code == 401
    # The record that it happened survives, with the entries from before.
    deleted = AuditEntry.objects.get(patient_id=alice.pk, action="account_deleted")
    assert (deleted.actor_label, deleted.actor_role, deleted.route, deleted.status_code) == ("alice", "patient", "v1:me", 204)
    assert AuditEntry.objects.filter(patient_id=alice.pk).count() == 1  # written once, in the deleting transaction


@pytest.mark.django_db
def test_deletion_requires_the_current_password(world: World) -> None:
    client = world.client("patient")
    missing = client.delete("/api/v1/me", {}, format="json")
    assert missing.status_code == 400 and "password" in missing.json()
    wrong = client.delete("/api/v1/me", {"password": "guess-guess-guess"}, format="json")
    assert wrong.status_code == 403 and "password" in wrong.json()["detail"]
    assert Patient.objects.filter(pk=world.alice.pk).exists()
    assert not AuditEntry.objects.filter(action="account_deleted").exists()
    # Only patients delete themselves here; a clinician's correct password changes nothing.
    assert bearer(world.clinician).delete("/api/v1/me", {"password": PASSWORD}, format="json").status_code == 403
    assert User.objects.filter(pk=world.clinician.pk).exists()


@pytest.mark.django_db
def test_a_device_whose_readings_also_belong_to_another_patient_is_unlinked_not_deleted(world: World) -> None:
    from django.utils import timezone

    device = world.alice_device
    GlucoseReading.objects.create(patient=world.bob, device=device, measured_at=timezone.now(), value_mgdl=120,
                                  source="vendor", received_at=timezone.now())
    assert world.client("patient").delete("/api/v1/me", {"password": PASSWORD}, format="json").status_code == 204
    device.refresh_from_db()
    assert device.patient_id is None
    assert GlucoseReading.objects.get(patient=world.bob).device_id == device.pk
