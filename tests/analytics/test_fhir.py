"""The CGM summary Bundle validates as FHIR (R4B models; R4 is not shipped) and carries the IG's LOINC codes."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation

from api import fhir
from api.fhir import ERR_INCLUDE
from glucoscope.readings.models import GlucoseReading
from glucoscope.readings.validation import ERR_TIMESTAMP_NAIVE
from tests.analytics.helpers import add_readings
from tests.conftest import World

pytestmark = pytest.mark.django_db


def loinc(resource: dict) -> str:  # type: ignore[type-arg]
    coding = resource["code"]["coding"][0]
    assert coding["system"] == "http://loinc.org"
    return str(coding["code"])


def test_summary_bundle_validates_and_has_the_ig_codes(world: World) -> None:
    # 20 readings: 2 very low (incl. a sensor Low), 2 low, 12 target, 2 high, 2 very high.
    add_readings(world.alice, ["Low", 50.0, 60.0, 65.0] + [120.0] * 12 + [200.0, 240.0, 300.0, "High"])
    response = world.client("clinician").get(f"/api/v1/patients/{world.alice.pk}/fhir/cgm-summary", {"unit": "mg/dL"})
    assert response.status_code == 200 and response["Content-Type"].startswith("application/fhir+json")
    body = response.json()
    bundle = Bundle.model_validate(body)
    assert bundle.type == "collection"
    resources = [e["resource"] for e in body["entry"]]
    for r in resources:
        Observation.model_validate(r)
    summary = resources[0]
    assert loinc(summary) == fhir.CODE_SUMMARY and summary["subject"]["reference"] == f"Patient/{world.alice.pk}"
    by_code = {loinc(r): r for r in resources[1:]}
    # Every member is referenced from the summary by its fullUrl.
    assert [m["reference"] for m in summary["hasMember"]] == [e["fullUrl"] for e in body["entry"][1:]]
    assert set(by_code) == {fhir.CODE_TIMES_IN_RANGES, "97507-8", fhir.CODE_GMI, fhir.CODE_CV,
                            fhir.CODE_DAYS_OF_WEAR, fhir.CODE_ACTIVE}
    ranges = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in by_code[fhir.CODE_TIMES_IN_RANGES]["component"]}
    # The IG's buckets are exclusive: low is 54-69 without the <54 readings.
    assert ranges == {fhir.CODE_VERY_LOW: 10.0, fhir.CODE_LOW: 10.0, fhir.CODE_TARGET: 60.0,
                      fhir.CODE_HIGH: 10.0, fhir.CODE_VERY_HIGH: 10.0}
    assert by_code["97507-8"]["valueQuantity"]["code"] == "mg/dL"
    assert by_code[fhir.CODE_DAYS_OF_WEAR]["valueQuantity"]["code"] == "d"


def test_readings_are_included_on_request_in_mmol(world: World) -> None:
    add_readings(world.alice, [90.08, "Low"])
    body = world.client("patient").get(f"/api/v1/patients/{world.alice.pk}/fhir/cgm-summary",
                                       {"unit": "mmol/L", "include": "readings"}).json()
    Bundle.model_validate(body)
    resources = [e["resource"] for e in body["entry"]]
    assert "105273-7" in {loinc(r) for r in resources}  # mean glucose, molar
    readings = [r for r in resources if loinc(r) == "105272-9"]
    assert [r["valueQuantity"]["value"] for r in readings] == [5.0, 2.22]
    assert readings[1]["valueQuantity"]["comparator"] == "<"  # sensor Low: a bound, not an invented value
    assert all(r["valueQuantity"]["code"] == "mmol/L" for r in readings)


def test_empty_period_still_validates(world: World) -> None:
    body = world.client("patient").get(f"/api/v1/patients/{world.alice.pk}/fhir/cgm-summary").json()
    Bundle.model_validate(body)
    assert len(body["entry"]) >= 1


def test_unknown_include_is_rejected(world: World) -> None:
    response = world.client("patient").get(f"/api/v1/patients/{world.alice.pk}/fhir/cgm-summary", {"include": "all"})
    assert response.status_code == 400 and response.json()["include"] == [ERR_INCLUDE]


def submit_url(world: World) -> str:
    return f"/api/v1/patients/{world.alice.pk}/fhir/$submit-cgm-bundle"


def reading(when: str, value: float, unit: str = "mg/dL", **quantity: object) -> dict:  # type: ignore[type-arg]
    return {"resource": {"resourceType": "Observation", "status": "final",
                         "code": {"coding": [{"system": "http://loinc.org", "code": fhir.CODE_READING[unit]}]},
                         "effectiveDateTime": when, "valueQuantity": {"value": value, "unit": unit, "code": unit, **quantity}}}


def test_round_trip_export_then_submit_imports_the_readings(world: World) -> None:
    add_readings(world.alice, [100.0, 120.0, "Low"])
    exported = world.client("patient").get(f"/api/v1/patients/{world.alice.pk}/fhir/cgm-summary",
                                           {"include": "readings"}).json()
    GlucoseReading.objects.all().delete()
    exported["type"] = "transaction"
    response = world.client("patient").post(submit_url(world), exported, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["accepted"] == 3 and body["rejected"] == [] and body["ignored"] >= 1  # summaries are recomputed
    assert sorted(GlucoseReading.objects.values_list("sensor_flag", flat=True)) == ["", "", "low"]
    again = world.client("patient").post(submit_url(world), exported, format="json").json()
    assert again["accepted"] == 0 and again["duplicates"] == 3  # idempotent


def test_submit_rejects_entries_item_by_item_with_entry_indexes(world: World) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        reading("2026-11-26T08:00:00+00:00", 6.1, "mmol/L"),
        {"resource": {"resourceType": "Patient"}},
        {"resource": {**reading("2026-11-26T08:05:00+00:00", 100)["resource"], "subject": {"reference": "Patient/999"}}},
        reading("2026-11-26T08:10:00", 100),
        {"resource": {"resourceType": "Observation", "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}]}}},
    ]}
    body = world.client("patient").post(submit_url(world), bundle, format="json").json()
    assert body["accepted"] == 1
    errors = {r["index"]: r["errors"] for r in body["rejected"]}
    assert errors[1] == {"resource": [fhir.ERR_NOT_OBSERVATION]}
    assert errors[2] == {"subject": [fhir.ERR_SUBJECT.format(id=world.alice.pk)]}
    assert errors[3] == {"timestamp": [ERR_TIMESTAMP_NAIVE]}
    assert errors[4] == {"code": [fhir.ERR_UNKNOWN_CODE]}


@pytest.mark.parametrize("payload", [[], {"resourceType": "Patient"}, {"resourceType": "Bundle", "type": "searchset", "entry": [{}]},
                                     {"resourceType": "Bundle", "type": "transaction", "entry": []}])
def test_submit_needs_a_bundle(world: World, payload: object) -> None:
    response = world.client("patient").post(submit_url(world), payload, format="json")
    assert response.status_code == 400 and response.json()["non_field_errors"] == [fhir.ERR_NOT_A_BUNDLE]


def test_submit_is_for_the_patients_own_app_and_bounded(world: World, settings) -> None:  # type: ignore[no-untyped-def]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [reading("2026-11-26T08:00:00Z", 100)] * 3}
    response = world.client("clinician").post(submit_url(world), bundle, format="json")
    assert response.status_code == 403 and response.json()["detail"] == fhir.ERR_OWN_APP_ONLY
    settings.MAX_BATCH_ITEMS = 2
    assert world.client("patient").post(submit_url(world), bundle, format="json").status_code == 413
