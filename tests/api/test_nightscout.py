"""Nightscout-compatible API with payloads shaped exactly like each uploader's (GUIDE.md §6)."""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.utils import timezone

from api.nightscout.views import NS_SGV_LOW
from glucoscope.readings.models import GlucoseReading, NightscoutDocument, Treatment
from tests.conftest import World, nightscout_client

pytestmark = pytest.mark.django_db
BASE = "/nightscout/api/v1"


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def xdrip_date_string(moment: datetime) -> str:
    """xDrip+ writes local time with a +0100-style offset and milliseconds."""
    local = moment.astimezone(dt_timezone(timedelta(hours=1)))
    return local.strftime("%Y-%m-%dT%H:%M:%S.000%z")


def xdrip_entry(moment: datetime, sgv: int, direction: str = "Flat") -> dict[str, object]:
    return {
        "device": "xDrip-DexcomG6", "date": ms(moment), "dateString": xdrip_date_string(moment), "sgv": sgv,
        "delta": 1.5, "direction": direction, "type": "sgv", "filtered": 171000, "unfiltered": 173000,
        "rssi": 100, "noise": 1, "sysTime": xdrip_date_string(moment),
    }


def post_json(client, path: str, body: object, **extra):  # type: ignore[no-untyped-def]
    return client.post(f"{BASE}/{path}", data=json.dumps(body), content_type="application/json", **extra)


def test_xdrip_gzipped_upload_with_plus0100_offsets_is_stored_in_utc(world: World) -> None:
    now = timezone.now().replace(microsecond=0)
    entries = [xdrip_entry(now - timedelta(minutes=10), 120), xdrip_entry(now - timedelta(minutes=5), 125, "FortyFiveUp")]
    body = gzip.compress(json.dumps(entries).encode())
    response = world.client("nightscout").post(
        f"{BASE}/entries", data=body, content_type="application/json", HTTP_CONTENT_ENCODING="gzip"
    )
    assert response.status_code == 200, response.content
    stored = list(GlucoseReading.objects.filter(patient=world.alice).order_by("measured_at"))
    assert [(r.measured_at, r.value_mgdl, r.direction, r.source) for r in stored] == [
        (now - timedelta(minutes=10), 120.0, "Flat", "nightscout"),
        (now - timedelta(minutes=5), 125.0, "FortyFiveUp", "nightscout"),
    ]


def test_loop_upload_gets_an_array_of_the_same_length_with_ids_and_loop_spellings_work(world: World) -> None:
    now = timezone.now()
    loop_entries = [
        {"date": ms(now - timedelta(minutes=m)), "dateString": (now - timedelta(minutes=m)).isoformat(), "sgv": 100 + m,
         "direction": direction, "device": "loop://iPhone", "type": "sgv"}
        for m, direction in ((10, "NotComputable"), (5, "RateOutOfRange"), (0, "Flat"))
    ]
    response = post_json(world.client("nightscout"), "entries", loop_entries)
    body = response.json()
    assert len(body) == 3 and all(len(e["_id"]) == 24 for e in body)
    assert len({e["_id"] for e in body}) == 3
    # A retry gets the same ids back and stores nothing new.
    again = post_json(world.client("nightscout"), "entries", loop_entries).json()
    assert [e["_id"] for e in again] == [e["_id"] for e in body]
    assert GlucoseReading.objects.count() == 3
    assert set(GlucoseReading.objects.values_list("direction", flat=True)) == {"NOT COMPUTABLE", "RATE OUT OF RANGE", "Flat"}


def test_androidaps_and_share2_payloads_are_accepted(world: World) -> None:
    now = timezone.now()
    aaps = {"type": "sgv", "sgv": 143, "date": ms(now - timedelta(minutes=7)), "dateString": (now - timedelta(minutes=7)).isoformat(),
            "direction": "SingleDown", "device": "AndroidAPS-DexcomG6", "noise": 0, "units": "mg/dl", "isValid": True}
    share2 = {"sgv": 150, "date": ms(now - timedelta(minutes=2)), "dateString": (now - timedelta(minutes=2)).isoformat(),
              "trend": 3, "direction": "FortyFiveUp", "device": "share2", "type": "sgv"}
    assert post_json(world.client("nightscout"), "entries.json", [aaps]).status_code == 200
    assert post_json(world.client("nightscout"), "entries.json", [share2]).status_code == 200
    assert list(GlucoseReading.objects.order_by("measured_at").values_list("value_mgdl", "direction")) == [
        (143.0, "SingleDown"), (150.0, "FortyFiveUp"),
    ]


def test_two_uploaders_on_one_sensor_store_one_reading(world: World) -> None:
    moment = timezone.now() - timedelta(minutes=3)
    post_json(world.client("nightscout"), "entries", [xdrip_entry(moment, 111)])
    aaps = {"type": "sgv", "sgv": 111, "date": ms(moment + timedelta(seconds=17)), "direction": "Flat"}
    body = post_json(world.client("nightscout"), "entries", [aaps]).json()
    assert GlucoseReading.objects.count() == 1
    assert body[0]["_id"] == post_json(world.client("nightscout"), "entries", [xdrip_entry(moment, 111)]).json()[0]["_id"]


def test_meter_and_calibration_entries_are_kept(world: World) -> None:
    now = timezone.now()
    response = post_json(world.client("nightscout"), "entries", [
        {"type": "mbg", "mbg": 98, "date": ms(now - timedelta(minutes=1))},
        {"type": "cal", "slope": 850, "intercept": 3000, "scale": 1, "date": ms(now - timedelta(minutes=1))},
    ])
    assert response.status_code == 200 and len(response.json()) == 2
    assert GlucoseReading.objects.get().is_calibration
    assert NightscoutDocument.objects.get().document["type"] == "cal"


def test_invalid_entries_are_rejected_with_reasons_and_valid_ones_kept(world: World) -> None:
    now = timezone.now()
    response = post_json(world.client("nightscout"), "entries", [
        {"type": "sgv", "sgv": "abc", "date": ms(now)},
        {"type": "sgv", "sgv": 5, "date": ms(now)},
    ])
    assert response.status_code == 400
    assert [r["index"] for r in response.json()["rejected"]] == [0, 1]
    mixed = post_json(world.client("nightscout"), "entries", [{"type": "sgv", "sgv": 100, "date": ms(now)}, {"sgv": 1}])
    assert mixed.status_code == 200 and len(mixed.json()) == 1 and mixed["X-Rejected-Count"] == "1"


def test_entries_read_back_newest_first_with_delta_direction_count_and_date_filters(world: World) -> None:
    start = timezone.now().replace(microsecond=0) - timedelta(hours=1)
    post_json(world.client("nightscout"), "entries", [xdrip_entry(start + timedelta(minutes=5 * i), 100 + 2 * i) for i in range(12)])
    client = world.client("nightscout")
    body = client.get(f"{BASE}/entries.json").json()
    assert len(body) == 10
    assert [e["sgv"] for e in body[:3]] == [122, 120, 118]
    assert all(e["delta"] == 2.0 and e["direction"] == "Flat" and e["type"] == "sgv" for e in body)
    assert body[0]["dateString"].endswith("Z") and body[0]["date"] == ms(start + timedelta(minutes=55))
    assert len(client.get(f"{BASE}/entries/sgv.json?count=3").json()) == 3
    since = ms(start + timedelta(minutes=40))
    assert [e["sgv"] for e in client.get(f"{BASE}/entries.json?find[date][$gte]={since}&count=100").json()] == [122, 120, 118, 116]
    until = ms(start + timedelta(minutes=10))
    assert [e["sgv"] for e in client.get(f"{BASE}/entries.json?find[date][$lte]={until}").json()] == [104, 102, 100]
    iso = (start + timedelta(minutes=50)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert [e["sgv"] for e in client.get(f"{BASE}/entries/sgv.json?find[dateString][$gte]={iso}").json()] == [122, 120]
    current = client.get(f"{BASE}/entries/current.json").json()
    assert len(current) == 1 and current[0]["sgv"] == 122 and current[0]["delta"] == 2.0


def test_bad_query_parameters_are_400(world: World) -> None:
    client = world.client("nightscout")
    assert client.get(f"{BASE}/entries.json?count=lots").status_code == 400
    assert client.get(f"{BASE}/entries.json?count=1000000").status_code == 400
    assert client.get(f"{BASE}/entries.json?find[date][$gte]=yesterday").status_code == 400


def test_sensor_low_is_returned_as_nightscouts_low_value(world: World) -> None:
    post_json(world.client("nightscout"), "entries", [{"type": "sgv", "sgv": "Low", "date": ms(timezone.now())}])
    assert world.client("nightscout").get(f"{BASE}/entries.json").json()[0]["sgv"] == NS_SGV_LOW


def test_treatments_from_uploaders_round_trip(world: World) -> None:
    now = timezone.now().replace(microsecond=0)
    treatments = [
        {"eventType": "Meal Bolus", "created_at": (now - timedelta(minutes=30)).isoformat(), "carbs": 40, "insulin": 3.5,
         "enteredBy": "xdrip", "notes": "pasta"},
        {"eventType": "Temp Basal", "created_at": (now - timedelta(minutes=20)).isoformat(), "absolute": 0.5, "rate": 0.5,
         "duration": 30, "enteredBy": "openaps://AndroidAPS"},
        {"eventType": "Site Change", "created_at": (now - timedelta(minutes=10)).isoformat(), "enteredBy": "loop://iPhone"},
    ]
    response = post_json(world.client("nightscout"), "treatments", treatments)
    assert response.status_code == 200 and len(response.json()) == 3
    assert post_json(world.client("nightscout"), "treatments", treatments).json() == response.json()
    assert sorted(Treatment.objects.values_list("kind", flat=True)) == ["basal", "bolus", "carbs", "note"]
    read = world.client("nightscout").get(f"{BASE}/treatments.json?count=10").json()
    assert {t["eventType"] for t in read} == {"Meal Bolus", "Temp Basal", "Site Change"}
    assert post_json(world.client("nightscout"), "treatments", [{"eventType": "Meal Bolus", "carbs": 999,
                                                                 "created_at": now.isoformat()}]).status_code == 400


def test_devicestatus_and_profile_are_stored_and_read_back(world: World) -> None:
    client = world.client("nightscout")
    status = {"device": "openaps://phone", "created_at": timezone.now().isoformat(), "pump": {"reservoir": 120}, "uploaderBattery": 80}
    assert post_json(client, "devicestatus", [status]).json()[0]["pump"] == {"reservoir": 120}
    assert client.get(f"{BASE}/devicestatus.json").json()[0]["uploaderBattery"] == 80
    profile = {"defaultProfile": "Default", "store": {"Default": {"dia": 5, "carbratio": [{"time": "00:00", "value": 10}]}},
               "startDate": timezone.now().isoformat()}
    assert post_json(client, "profile", profile).status_code == 200
    assert client.get(f"{BASE}/profile.json").json()[0]["defaultProfile"] == "Default"
    assert post_json(client, "profile", ["not an object"]).status_code == 400
    # Uploaders retry: the same document posted again is stored once and gets the same _id.
    again = post_json(client, "devicestatus", [status]).json()
    assert again[0]["_id"] == client.get(f"{BASE}/devicestatus.json").json()[0]["_id"]
    assert NightscoutDocument.objects.filter(collection="devicestatus").count() == 1


@pytest.mark.parametrize("path", ["entries", "treatments", "devicestatus", "profile"])
def test_every_nightscout_collection_refuses_oversized_batches_and_bodies(world: World, path: str, settings) -> None:  # type: ignore[no-untyped-def]
    assert post_json(world.client("nightscout"), path, [{"sgv": 100}] * 10_001).status_code == 413
    settings.MAX_REQUEST_BODY_BYTES = 500
    assert post_json(world.client("nightscout"), path, [{"notes": "x" * 1000}]).status_code == 413


@pytest.mark.parametrize("path", ["entries", "treatments", "devicestatus", "profile"])
def test_every_nightscout_collection_refuses_malformed_json(world: World, path: str) -> None:
    response = world.client("nightscout").post(f"{BASE}/{path}", data="{not json", content_type="application/json")
    assert response.status_code == 400


def test_status_verifyauth_and_experiments_test(world: World) -> None:
    from rest_framework.test import APIClient

    anonymous = APIClient()
    status = anonymous.get(f"{BASE}/status.json").json()
    assert status["status"] == "ok" and status["authorized"] is None
    assert world.client("nightscout").get(f"{BASE}/status.json").json()["authorized"] == {"canRead": True, "canWrite": True}
    assert anonymous.get(f"{BASE}/verifyauth").json()["message"]["message"] == "UNAUTHORIZED"
    assert nightscout_client("wrong").get(f"{BASE}/verifyauth").json()["message"]["canRead"] is False
    assert world.client("nightscout").get(f"{BASE}/verifyauth").json()["message"]["message"] == "OK"
    assert world.client("nightscout").get(f"{BASE}/experiments/test").json() == {"status": "ok"}
    assert anonymous.get(f"{BASE}/experiments/test").status_code == 401
    assert nightscout_client("wrong").get(f"{BASE}/experiments/test").status_code == 401


def test_the_credential_identifies_the_patient_so_uploaders_never_mix(world: World) -> None:
    now = timezone.now()
    post_json(world.client("nightscout"), "entries", [{"type": "sgv", "sgv": 101, "date": ms(now)}])
    post_json(nightscout_client(world.bob_ns_secret), "entries", [{"type": "sgv", "sgv": 202, "date": ms(now)}])
    assert [e["sgv"] for e in nightscout_client(world.bob_ns_secret).get(f"{BASE}/entries.json").json()] == [202]
    assert list(GlucoseReading.objects.filter(patient=world.alice).values_list("value_mgdl", flat=True)) == [101.0]


def test_token_in_query_string_authenticates_like_nightscout_tokens(world: World) -> None:
    from rest_framework.test import APIClient

    from glucoscope.patients.services import nightscout_credential_rotate

    secrets = nightscout_credential_rotate(patient=world.alice)
    assert APIClient().get(f"{BASE}/entries.json?token={secrets.token}").status_code == 200
    assert APIClient().get(f"{BASE}/entries.json?token=nope").status_code == 401
    # The rotation retired the old secret.
    assert world.client("nightscout").get(f"{BASE}/entries.json").status_code == 401
    client = APIClient()
    client.credentials(HTTP_API_SECRET=hashlib.sha1(secrets.secret.encode()).hexdigest())
    assert client.get(f"{BASE}/entries.json").status_code == 200


@pytest.mark.parametrize("role", ["patient", "vendor", "clinician"])
def test_other_credentials_do_not_open_the_nightscout_api(world: World, role: str) -> None:
    assert world.client(role).get(f"{BASE}/entries.json").status_code == 401
    assert post_json(world.client(role), "entries", [{"sgv": 100, "date": ms(timezone.now())}]).status_code == 401


def test_oversized_nightscout_batches_are_413(world: World) -> None:
    entry = {"type": "sgv", "sgv": 100, "date": ms(timezone.now())}
    assert post_json(world.client("nightscout"), "entries", [entry] * 10_001).status_code == 413
