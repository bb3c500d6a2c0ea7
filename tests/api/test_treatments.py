"""Treatments: POST /api/v1/treatments and GET /api/v1/patients/{id}/treatments."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from glucoscope.readings import validation
from glucoscope.readings.batches import ERR_PATIENT_NOT_ALLOWED, ERR_PATIENT_REQUIRED
from glucoscope.readings.models import Treatment
from tests.conftest import World

pytestmark = pytest.mark.django_db
URL = "/api/v1/treatments"


def ago(minutes: float) -> str:
    return (timezone.now() - timedelta(minutes=minutes)).isoformat()


def post(client, body):  # type: ignore[no-untyped-def]
    return client.post(URL, data=json.dumps(body), content_type="application/json")


def test_patient_logs_carbs_insulin_exercise_and_notes_once(world: World) -> None:
    batch = [
        {"timestamp": ago(30), "kind": "carbs", "carbs_g": 45},
        {"timestamp": ago(30), "kind": "bolus", "insulin_units": 4.5},
        {"timestamp": ago(20), "kind": "basal", "basal_rate_u_per_h": 0.8, "duration_minutes": 30},
        {"timestamp": ago(10), "kind": "exercise", "duration_minutes": 45},
        {"timestamp": ago(5), "kind": "note", "note": "Felt shaky"},
    ]
    assert post(world.client("patient"), batch).json() == {"accepted": 5, "duplicates": 0, "rejected": []}
    assert post(world.client("patient"), batch).json() == {"accepted": 0, "duplicates": 5, "rejected": []}
    carbs = Treatment.objects.get(kind="carbs")
    assert carbs.carbs_g == 45 and carbs.entered_by == world.alice.user and carbs.patient == world.alice


def test_caregiver_and_care_team_log_for_their_patient_but_not_others(world: World) -> None:
    for role in ("caregiver", "clinician"):
        response = post(world.client(role), {"patient": world.alice.pk, "timestamp": ago(len(role)), "kind": "carbs", "carbs_g": 20})
        assert response.json()["accepted"] == 1, role
    for role, target in (("caregiver", world.bob), ("clinician", world.bob), ("revoked_clinician", world.alice),
                         ("other_patient", world.alice)):
        response = post(world.client(role), {"patient": target.pk, "timestamp": ago(1), "kind": "carbs", "carbs_g": 20})
        assert response.status_code == 400, role
        assert response.json()["rejected"][0]["errors"] == {"patient": [ERR_PATIENT_NOT_ALLOWED]}, role
    response = post(world.client("clinician"), {"timestamp": ago(1), "kind": "carbs", "carbs_g": 20})
    assert response.json()["rejected"][0]["errors"] == {"patient": [ERR_PATIENT_REQUIRED]}


def test_invalid_treatments_name_the_field(world: World) -> None:
    response = post(world.client("patient"), [
        {"timestamp": ago(1), "kind": "carbs", "carbs_g": 900},
        {"timestamp": ago(2), "kind": "bolus"},
        {"timestamp": ago(3), "kind": "pizza"},
        {"timestamp": ago(4), "kind": "note", "note": ""},
        {"timestamp": ago(5), "kind": "bolus", "insulin_units": "lots"},
        {"timestamp": ago(6), "kind": "basal", "basal_rate_u_per_h": 50},
        {"timestamp": ago(7), "kind": "note", "note": "x" * 2001},
        {"timestamp": ago(-60), "kind": "carbs", "carbs_g": 10},
    ])
    assert response.status_code == 400
    assert [r["errors"] for r in response.json()["rejected"]] == [
        {"carbs_g": [validation.ERR_CARBS]},
        {"insulin_units": [validation.ERR_REQUIRED]},
        {"kind": [validation.ERR_TREATMENT_KIND]},
        {"note": [validation.ERR_NOTE_REQUIRED]},
        {"insulin_units": [validation.ERR_INSULIN]},
        {"basal_rate_u_per_h": [validation.ERR_BASAL_RATE]},
        {"note": [validation.ERR_NOTE_LENGTH]},
        {"timestamp": [validation.ERR_TIMESTAMP_FUTURE]},
    ]


@pytest.mark.parametrize("role, status", [("anonymous", 401), ("vendor", 403), ("nightscout", 401), ("staff", 400)])
def test_non_people_and_staff_cannot_log_treatments(world: World, role: str, status: int) -> None:
    response = post(world.client(role), {"patient": world.alice.pk, "timestamp": ago(1), "kind": "carbs", "carbs_g": 10})
    assert response.status_code == status
    assert not Treatment.objects.exists()


def test_treatments_read_back_in_range_for_permitted_roles_only(world: World) -> None:
    post(world.client("patient"), [{"timestamp": ago(60 * h), "kind": "carbs", "carbs_g": 10 + h} for h in range(5)])
    url = f"/api/v1/patients/{world.alice.pk}/treatments"
    body = world.client("clinician").get(url + f"?start={(timezone.now() - timedelta(hours=2, minutes=30)).isoformat().replace('+', '%2B')}").json()
    assert [t["carbs_g"] for t in body["results"]] == [12, 11, 10]
    for role in ("other_patient", "other_clinician", "revoked_clinician", "staff"):
        assert world.client(role).get(url).status_code == 404, role
    assert world.client("vendor").get(url).status_code == 403
