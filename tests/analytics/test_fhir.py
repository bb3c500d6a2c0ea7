"""The CGM summary Bundle validates as FHIR (R4B models; R4 is not shipped) and carries the IG's LOINC codes."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation

from api import fhir
from api.fhir import ERR_INCLUDE
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
