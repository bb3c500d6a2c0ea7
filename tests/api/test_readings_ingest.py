"""POST /api/v1/readings: validation, idempotency, near-duplicates, scope and limits."""

from __future__ import annotations

import gzip
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from glucoscope.readings import validation
from glucoscope.readings.batches import ERR_DEVICE_PATIENT_MISMATCH, ERR_DEVICE_UNKNOWN, ERR_PATIENT_NOT_ALLOWED
from glucoscope.readings.models import GlucoseReading, PatientOutbox, PatientSummary
from tests.conftest import World

URL = "/api/v1/readings"
pytestmark = pytest.mark.django_db


def ago(minutes: float) -> str:
    return (timezone.now() - timedelta(minutes=minutes)).isoformat()


def ms_ago(minutes: float) -> int:
    return int((timezone.now() - timedelta(minutes=minutes)).timestamp() * 1000)


def post(client, body, **extra):  # type: ignore[no-untyped-def]
    return client.post(URL, data=json.dumps(body), content_type="application/json", **extra)


def test_patient_app_posts_an_array_and_everything_is_stored_in_mgdl(world: World) -> None:
    response = post(world.client("patient"), [
        {"timestamp": ago(10), "value": 120, "unit": "mg/dL", "trend": "Flat"},
        {"timestamp": ago(5), "value": 7.0, "unit": "mmol/L", "trend": "FortyFiveUp"},
        {"timestamp": ms_ago(0), "value": "Low", "unit": "mg/dL"},
    ])
    assert response.status_code == 200, response.content
    assert response.json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    readings = list(GlucoseReading.objects.filter(patient=world.alice).order_by("measured_at"))
    assert [r.value_mgdl for r in readings] == [120.0, 126.1, None]
    assert readings[2].sensor_flag == "low"
    assert readings[0].direction == "Flat" and readings[0].source == "app"


def test_a_single_object_is_accepted(world: World) -> None:
    response = post(world.client("patient"), {"timestamp": ago(1), "value": 99, "unit": "mg/dL"})
    assert response.json()["accepted"] == 1


def test_both_spellings_of_direction_are_normalised(world: World) -> None:
    post(world.client("patient"), [
        {"timestamp": ago(10), "value": 100, "unit": "mg/dL", "trend": "NotComputable"},
        {"timestamp": ago(5), "value": 101, "unit": "mg/dL", "trend": "RATE OUT OF RANGE"},
    ])
    directions = list(GlucoseReading.objects.order_by("measured_at").values_list("direction", flat=True))
    assert directions == ["NOT COMPUTABLE", "RATE OUT OF RANGE"]


def test_reposting_the_same_batch_stores_nothing_twice(world: World) -> None:
    batch = [{"timestamp": ago(m), "value": 100 + m, "unit": "mg/dL"} for m in (15, 10, 5)]
    assert post(world.client("patient"), batch).json()["accepted"] == 3
    assert post(world.client("patient"), batch).json() == {"accepted": 0, "duplicates": 3, "rejected": []}
    assert GlucoseReading.objects.count() == 3


def test_the_same_sensor_value_from_two_apps_less_than_60_s_apart_is_stored_once(world: World) -> None:
    moment = timezone.now() - timedelta(minutes=5)
    xdrip = {"timestamp": moment.isoformat(), "value": 140, "unit": "mg/dL"}
    loop = {"timestamp": (moment + timedelta(seconds=42)).isoformat(), "value": 140, "unit": "mg/dL"}
    assert post(world.client("patient"), xdrip).json()["accepted"] == 1
    assert post(world.client("patient"), loop).json() == {"accepted": 0, "duplicates": 1, "rejected": []}
    # Within one batch too, and a different value or 60 s apart is a new reading.
    batch = [
        {"timestamp": (moment + timedelta(minutes=1)).isoformat(), "value": 150, "unit": "mg/dL"},
        {"timestamp": (moment + timedelta(minutes=1, seconds=20)).isoformat(), "value": 150, "unit": "mg/dL"},
        {"timestamp": (moment + timedelta(minutes=1, seconds=30)).isoformat(), "value": 151, "unit": "mg/dL"},
        {"timestamp": (moment + timedelta(minutes=2, seconds=20)).isoformat(), "value": 150, "unit": "mg/dL"},
    ]
    assert post(world.client("patient"), batch).json() == {"accepted": 3, "duplicates": 1, "rejected": []}


def test_invalid_items_are_rejected_by_index_and_valid_ones_kept(world: World) -> None:
    response = post(world.client("patient"), [
        {"timestamp": ago(30), "value": 110, "unit": "mg/dL"},
        {"timestamp": ago(25), "value": "abc", "unit": "mg/dL"},
        {"timestamp": ago(20), "value": 700, "unit": "mg/dL"},
        {"timestamp": ago(15), "value": 40, "unit": "mmol/L"},
        {"timestamp": ago(10), "value": 100, "unit": "mg/dl%"},
        {"timestamp": ago(-10), "value": 100, "unit": "mg/dL"},
        {"timestamp": 1_500_000_000, "value": 100, "unit": "mg/dL"},
        {"timestamp": "2026-11-26T10:00:00", "value": 100, "unit": "mg/dL"},
        {"value": 100, "unit": "mg/dL"},
        "not an object",
        {"timestamp": ago(5), "value": 100, "unit": "mg/dL", "trend": "Sideways"},
        {"timestamp": ago(4), "value": True, "unit": "mg/dL"},
    ])
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 1
    errors = {entry["index"]: entry["errors"] for entry in body["rejected"]}
    assert errors == {
        1: {"value": [validation.ERR_VALUE_NOT_NUMBER]},
        2: {"value": [validation.ERR_VALUE_RANGE_MGDL]},
        3: {"value": [validation.ERR_VALUE_RANGE_MMOLL]},
        4: {"unit": [validation.ERR_UNIT]},
        5: {"timestamp": [validation.ERR_TIMESTAMP_FUTURE]},
        6: {"timestamp": [validation.ERR_TIMESTAMP_TOO_OLD]},
        7: {"timestamp": [validation.ERR_TIMESTAMP_NAIVE]},
        8: {"timestamp": [validation.ERR_REQUIRED]},
        9: {"non_field_errors": [validation.ERR_NOT_OBJECT]},
        10: {"trend": [validation.ERR_TREND]},
        11: {"value": [validation.ERR_VALUE_NOT_NUMBER]},
    }
    assert GlucoseReading.objects.count() == 1


def test_a_batch_where_everything_is_rejected_answers_400(world: World) -> None:
    response = post(world.client("patient"), [{"timestamp": ago(1), "value": 5, "unit": "mg/dL"}])
    assert response.status_code == 400
    assert response.json()["rejected"][0]["errors"] == {"value": [validation.ERR_VALUE_RANGE_MGDL]}


def test_malformed_json_is_a_400_naming_the_problem(world: World) -> None:
    response = world.client("patient").post(URL, data="[{oops", content_type="application/json")
    assert response.status_code == 400
    assert "Malformed JSON" in response.json()["detail"]


def test_wrong_content_type_is_415(world: World) -> None:
    response = world.client("patient").post(URL, data="timestamp=1&value=2", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415


@pytest.mark.parametrize("body", [[], {}, "text", 5])
def test_empty_or_non_collection_bodies_are_400(world: World, body: object) -> None:
    response = post(world.client("patient"), body)
    assert response.status_code == 400


def test_more_than_10000_items_is_413(world: World) -> None:
    batch = [{"timestamp": ago(1), "value": 100, "unit": "mg/dL"}] * 10_001
    response = post(world.client("patient"), batch)
    assert response.status_code == 413
    assert GlucoseReading.objects.count() == 0


def test_oversized_body_is_413_before_parsing(world: World, settings) -> None:  # type: ignore[no-untyped-def]
    settings.MAX_REQUEST_BODY_BYTES = 1000
    batch = [{"timestamp": ago(1), "value": 100, "unit": "mg/dL", "pad": "x" * 2000}]
    response = post(world.client("patient"), batch)
    assert response.status_code == 413


def test_gzip_bodies_are_decoded_and_gzip_bombs_refused(world: World, settings) -> None:  # type: ignore[no-untyped-def]
    body = gzip.compress(json.dumps([{"timestamp": ago(1), "value": 100, "unit": "mg/dL"}]).encode())
    response = world.client("patient").post(URL, data=body, content_type="application/json", HTTP_CONTENT_ENCODING="gzip")
    assert response.json()["accepted"] == 1
    settings.MAX_REQUEST_BODY_BYTES = 10_000
    bomb = gzip.compress(b"[" + b" " * 1_000_000 + b"]")
    response = world.client("patient").post(URL, data=bomb, content_type="application/json", HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 413
    response = world.client("patient").post(URL, data=b"not gzip", content_type="application/json", HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 400


def test_a_patient_cannot_post_for_another_patient(world: World) -> None:
    response = post(world.client("patient"), {"patient": world.bob.pk, "timestamp": ago(1), "value": 100, "unit": "mg/dL"})
    assert response.status_code == 400
    assert response.json()["rejected"][0]["errors"] == {"patient": [ERR_PATIENT_NOT_ALLOWED]}
    assert not GlucoseReading.objects.filter(patient=world.bob).exists()


def test_vendor_posts_by_device_serial_or_linked_patient(world: World) -> None:
    response = post(world.client("vendor"), [
        {"device": "ALICE-1", "timestamp": ago(10), "value": 100, "unit": "mg/dL"},
        {"patient": world.alice.pk, "timestamp": ago(5), "value": 101, "unit": "mg/dL"},
    ])
    assert response.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    assert set(GlucoseReading.objects.values_list("device_id", "source")) == {(world.alice_device.pk, "vendor")}


def test_vendor_cannot_post_for_unlinked_patients_or_other_vendors_devices(world: World) -> None:
    response = post(world.client("vendor"), [
        {"patient": world.bob.pk, "timestamp": ago(10), "value": 100, "unit": "mg/dL"},
        {"device": "BOB-1", "timestamp": ago(9), "value": 100, "unit": "mg/dL"},
        {"device": "NOPE", "timestamp": ago(8), "value": 100, "unit": "mg/dL"},
        {"device": "ALICE-1", "patient": world.bob.pk, "timestamp": ago(7), "value": 100, "unit": "mg/dL"},
        {"patient": 999_999, "timestamp": ago(6), "value": 100, "unit": "mg/dL"},
    ])
    assert response.status_code == 400
    assert [entry["errors"] for entry in response.json()["rejected"]] == [
        {"patient": [ERR_PATIENT_NOT_ALLOWED]},
        {"device": [ERR_DEVICE_UNKNOWN]},
        {"device": [ERR_DEVICE_UNKNOWN]},
        {"device": [ERR_DEVICE_PATIENT_MISMATCH]},
        {"patient": [ERR_PATIENT_NOT_ALLOWED]},
    ]
    assert GlucoseReading.objects.count() == 0


@pytest.mark.parametrize("role, status", [
    ("anonymous", 401), ("caregiver", 403), ("clinician", 403), ("staff", 403), ("nightscout", 401),
])
def test_only_patients_and_vendors_may_post_readings(world: World, role: str, status: int) -> None:
    response = post(world.client(role), {"patient": world.alice.pk, "timestamp": ago(1), "value": 100, "unit": "mg/dL"})
    assert response.status_code == status
    assert GlucoseReading.objects.count() == 0


def test_a_revoked_or_wrong_api_key_is_401(world: World) -> None:
    from glucoscope.patients import services

    services.vendor_api_key_revoke(vendor=world.vendor, name="test")
    response = post(world.client("vendor"), {"device": "ALICE-1", "timestamp": ago(1), "value": 100, "unit": "mg/dL"})
    assert response.status_code == 401
    from tests.conftest import api_key_client

    assert post(api_key_client("abc.def"), {"timestamp": ago(1), "value": 1, "unit": "mg/dL"}).status_code == 401


def test_api_key_use_is_recorded(world: World) -> None:
    post(world.client("vendor"), {"device": "ALICE-1", "timestamp": ago(1), "value": 100, "unit": "mg/dL"})
    assert world.vendor.api_keys.get().last_used_at is not None


def test_ingest_marks_the_outbox_and_processing_refreshes_the_summary(world: World, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=True):
        post(world.client("patient"), [{"timestamp": ago(m), "value": 100 + m, "unit": "mg/dL"} for m in (10, 5)])
    summary = PatientSummary.objects.get(patient=world.alice)
    assert summary.readings_last_24h == 2 and summary.latest_reading.value_mgdl == 105
    assert not PatientOutbox.objects.exists()
