"""FHIR R4 export of a CGM summary, following the HL7 CGM Implementation Guide (STU1, FHIR R4).

HL7 International / Orders and Observations, "Continuous Glucose Monitoring" IG 1.0.0
(http://hl7.org/fhir/uv/cgm). LOINC codes as listed in GUIDE.md §7:

* CGM Summary 107931-8, with members (``hasMember``):
  * times-in-ranges panel 106793-3 with components very low 104642-4 (<54), low 104641-6 (54–69),
    target 97510-2 (70–180), high 104640-8 (181–250), very high 104639-0 (>250) mg/dL;
  * GMI 97506-0, CV 104638-2, days of wear 104636-6, % time active 104637-4;
  * mean glucose 97507-8 (mg/dL) or 105273-7 (mmol/L).
* Sensor readings (``include=readings``): 99504-3 (mg/dL) or 105272-9 (mmol/L).

The IG's ranges are *exclusive* buckets (low is 54–69 without <54), unlike the consensus's
cumulative TBR/TAR, so low = TBR<70 − TBR<54 and high = TAR>180 − TAR>250. The values are the
same cross-checked metrics the JSON API serves (glucoscope/metrics). The Bundle is a `collection`
(a read-out).

`POST patients/{id}/fhir/$submit-cgm-bundle` imports the sensor-reading Observations of a submitted
Bundle through the same validation and dedupe as `POST readings`. Summary Observations are not
imported: GlucoScope recomputes every summary from the readings, so they are counted as ignored.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.analytics import PERIOD, analytics_period
from api.forecasts import UNIT_PARAMETER
from api.query import glucose_unit
from api.schema import BATCH_OUTCOME_SCHEMA, batch_or_validation_error
from api.views import BatchTooLarge
from glucoscope.metrics import GlucoseSummary
from glucoscope.patients.models import MGDL_PER_MMOLL, Patient, Role
from glucoscope.patients.selectors import patient_get_for_user
from glucoscope.readings.batches import Uploader, reading_batch_ingest
from glucoscope.readings.models import GlucoseReading, ReadingSource, SensorFlag
from glucoscope.web import analytics

# `POST readings`' outcome, plus the count of summary Observations ignored (recomputed, not imported).
FHIR_SUBMIT_OUTCOME = {
    **BATCH_OUTCOME_SCHEMA,
    "properties": {**BATCH_OUTCOME_SCHEMA["properties"], "ignored": {"type": "integer", "minimum": 0}},
    "required": [*BATCH_OUTCOME_SCHEMA["required"], "ignored"],
}
ERR_INCLUDE = 'include must be "readings" or absent.'
ERR_NOT_A_BUNDLE = 'Send a FHIR Bundle (resourceType "Bundle", type "transaction" or "collection") with 1 or more entries.'
ERR_OWN_APP_ONLY = "Only the patient's own app submits CGM bundles."
ERR_TOO_MANY_ENTRIES = "At most {limit} entries per bundle; split it."
ERR_NOT_OBSERVATION = "Each entry must hold an Observation resource."
ERR_SUBJECT = "Observation.subject must reference Patient/{id}."
ERR_VALUE_QUANTITY = "A sensor reading needs valueQuantity with a value and a unit (mg/dL or mmol/L)."
ERR_EFFECTIVE = "A sensor reading needs effectiveDateTime (or effectiveInstant) with a UTC offset."
ERR_UNKNOWN_CODE = "Not a CGM sensor reading (LOINC 99504-3 or 105272-9) or CGM summary code."

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
IG = "http://hl7.org/fhir/uv/cgm/StructureDefinition/"
CODE_SUMMARY = "107931-8"
CODE_TIMES_IN_RANGES = "106793-3"
CODE_VERY_LOW, CODE_LOW, CODE_TARGET, CODE_HIGH, CODE_VERY_HIGH = "104642-4", "104641-6", "97510-2", "104640-8", "104639-0"
CODE_GMI, CODE_CV, CODE_DAYS_OF_WEAR, CODE_ACTIVE = "97506-0", "104638-2", "104636-6", "104637-4"
CODE_MEAN = {"mg/dL": "97507-8", "mmol/L": "105273-7"}
CODE_READING = {"mg/dL": "99504-3", "mmol/L": "105272-9"}
LAB_CATEGORY = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}]


def _code(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code, "display": display}]}


def _quantity(value: float, unit: str) -> dict[str, Any]:
    # The IG asks for percentages with at least two decimals of precision.
    return {"value": round(float(value), 2), "unit": unit, "system": UCUM, "code": unit}


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _observation(*, profile: str, code: dict[str, Any], patient: Patient, start: datetime, end: datetime,
                 **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "meta": {"profile": [IG + profile]},
        "status": "final",
        "category": LAB_CATEGORY,
        "code": code,
        "subject": {"reference": f"Patient/{patient.pk}"},
        "effectivePeriod": {"start": start.isoformat(), "end": end.isoformat()},
        **fields,
    }


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else max(0.0, a - b)


def cgm_summary_bundle(*, patient: Patient, summary: GlucoseSummary, start: datetime, end: datetime, unit: str,
                       readings: list[tuple[datetime, float | None, str]] | None) -> dict[str, Any]:
    """A FHIR R4 `collection` Bundle: the CGM Summary Observation, its members, optionally the readings."""
    members: list[tuple[str, dict[str, Any]]] = []

    def member(profile: str, code: str, display: str, value: float | None, q_unit: str) -> None:
        if value is None:
            return
        members.append((_urn(), _observation(profile=profile, code=_code(code, display), patient=patient,
                                             start=start, end=end, valueQuantity=_quantity(value, q_unit))))

    ranges = [
        (CODE_VERY_LOW, "Glucose [Time] in range <54 mg/dL", summary.time_below_54),
        (CODE_LOW, "Glucose [Time] in range 54-69 mg/dL", _minus(summary.time_below_70, summary.time_below_54)),
        (CODE_TARGET, "Glucose [Time] in range 70-180 mg/dL", summary.time_in_range_70_180),
        (CODE_HIGH, "Glucose [Time] in range 181-250 mg/dL", _minus(summary.time_above_180, summary.time_above_250)),
        (CODE_VERY_HIGH, "Glucose [Time] in range >250 mg/dL", summary.time_above_250),
    ]
    if summary.time_in_range_70_180 is not None:
        members.append((_urn(), _observation(
            profile="cgm-summary-times-in-ranges", code=_code(CODE_TIMES_IN_RANGES, "Glucose times in ranges panel"),
            patient=patient, start=start, end=end,
            component=[{"code": _code(c, d), "valueQuantity": _quantity(v, "%")} for c, d, v in ranges if v is not None],
        )))
    mean = summary.mean_glucose
    if mean is not None and unit == "mmol/L":
        mean = mean / MGDL_PER_MMOLL
    member(f"cgm-summary-mean-glucose-{'mass' if unit == 'mg/dL' else 'molar'}-per-volume", CODE_MEAN[unit],
           "Mean glucose", mean, unit)
    member("cgm-summary-gmi", CODE_GMI, "Glucose management indicator", summary.gmi, "%")
    member("cgm-summary-coefficient-of-variation", CODE_CV, "Glucose coefficient of variation", summary.cv, "%")
    member("cgm-summary-days-of-wear", CODE_DAYS_OF_WEAR, "Number of days CGM worn", summary.days_of_data, "d")
    member("cgm-summary-sensor-active-percentage", CODE_ACTIVE, "Percentage of time CGM active",
           summary.percent_active, "%")

    summary_obs = _observation(
        profile="cgm-summary", code=_code(CODE_SUMMARY, "CGM summary"), patient=patient, start=start, end=end,
        # FHIR forbids empty arrays, so a period without readings has no hasMember at all.
        **({"hasMember": [{"reference": urn} for urn, _ in members]} if members else {}),
        note=[{"text": "Computed by GlucoScope from CGM readings for decision support; not a diagnosis. "
                       f"Data sufficient (>=14 days, >=70% active; Battelino 2019): {summary.sufficient_data}."}],
    )
    entries = [{"fullUrl": _urn(), "resource": summary_obs}] + [{"fullUrl": u, "resource": r} for u, r in members]
    for measured_at, value, flag in readings or []:
        entries.append({"fullUrl": _urn(), "resource": _reading_observation(patient, measured_at, value, flag, unit)})
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "collection",
            "timestamp": end.isoformat(), "entry": entries}


def _reading_observation(patient: Patient, measured_at: datetime, value: float | None, flag: str, unit: str) -> dict[str, Any]:
    if flag == SensorFlag.LOW:
        # "Low" is below the sensor's range: state it as a comparator, never as an invented number.
        quantity = {**_quantity(40.0 if unit == "mg/dL" else 40.0 / MGDL_PER_MMOLL, unit), "comparator": "<"}
    elif flag == SensorFlag.HIGH:
        quantity = {**_quantity(400.0 if unit == "mg/dL" else 400.0 / MGDL_PER_MMOLL, unit), "comparator": ">"}
    else:
        assert value is not None
        quantity = _quantity(value if unit == "mg/dL" else value / MGDL_PER_MMOLL, unit)
    return {
        "resourceType": "Observation",
        "meta": {"profile": [IG + f"cgm-sensor-reading-{'mass' if unit == 'mg/dL' else 'molar'}-per-volume"]},
        "status": "final",
        "category": LAB_CATEGORY,
        "code": _code(CODE_READING[unit], "Glucose in interstitial fluid"),
        "subject": {"reference": f"Patient/{patient.pk}"},
        "effectiveDateTime": measured_at.isoformat(),
        "valueQuantity": quantity,
    }


class PatientCgmSummaryFhirApi(APIView):
    """FHIR R4 Bundle (HL7 CGM IG): CGM Summary Observation with members; `include=readings` adds sensor readings."""

    @extend_schema(parameters=[*PERIOD, UNIT_PARAMETER, OpenApiParameter("include", str, enum=["readings"])],
                   responses={(200, "application/fhir+json"): inline_serializer("FhirBundle", {
                       "resourceType": serializers.ChoiceField(["Bundle"]), "type": serializers.ChoiceField(["collection"]),
                       "entry": serializers.ListField(child=serializers.DictField())})})
    def get(self, request: Request, patient_id: int) -> Response:
        patient = patient_get_for_user(user=request.user, patient_id=patient_id)  # type: ignore[arg-type]
        start, end = analytics_period(request, patient=patient)
        unit = glucose_unit(request, default=patient.preferred_unit)
        include = request.query_params.get("include")
        if include not in (None, "readings"):
            raise ValidationError({"include": [ERR_INCLUDE]})
        summary = analytics.summarize(analytics.glucose_series(patient=patient, start=start, end=end))
        readings = None
        if include == "readings":
            readings = list(GlucoseReading.objects.filter(
                patient=patient, measured_at__gte=start, measured_at__lt=end, is_calibration=False,
            ).order_by("measured_at").values_list("measured_at", "value_mgdl", "sensor_flag"))
        bundle = cgm_summary_bundle(patient=patient, summary=summary, start=start, end=end, unit=unit, readings=readings)
        return Response(bundle, content_type="application/fhir+json")


SUMMARY_CODES = {CODE_SUMMARY, CODE_TIMES_IN_RANGES, CODE_GMI, CODE_CV, CODE_DAYS_OF_WEAR, CODE_ACTIVE, *CODE_MEAN.values()}


def _loinc_codes(resource: dict[str, Any]) -> set[str]:
    codings = (resource.get("code") or {}).get("coding") or []
    return {str(c.get("code")) for c in codings if isinstance(c, dict) and c.get("system") == LOINC}


def reading_item_from_observation(resource: Any, *, patient: Patient) -> dict[str, Any] | dict[str, list[str]] | None:
    """A native reading item from a sensor-reading Observation; None for summary Observations; else field errors."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
        return {"resource": [ERR_NOT_OBSERVATION]}
    codes = _loinc_codes(resource)
    if codes & SUMMARY_CODES:
        return None
    if not codes & set(CODE_READING.values()):
        return {"code": [ERR_UNKNOWN_CODE]}
    reference = ((resource.get("subject") or {}).get("reference")) if isinstance(resource.get("subject"), dict) else None
    if reference is not None and reference != f"Patient/{patient.pk}":
        return {"subject": [ERR_SUBJECT.format(id=patient.pk)]}
    quantity = resource.get("valueQuantity")
    if not isinstance(quantity, dict) or quantity.get("value") is None or not (quantity.get("code") or quantity.get("unit")):
        return {"valueQuantity": [ERR_VALUE_QUANTITY]}
    when = resource.get("effectiveDateTime") or resource.get("effectiveInstant")
    if not isinstance(when, str):
        return {"effectiveDateTime": [ERR_EFFECTIVE]}
    # A bound beyond the sensor's range is the sensor's Low/High, never a number we invent.
    comparator = quantity.get("comparator")
    value = "Low" if comparator in ("<", "<=") else "High" if comparator in (">", ">=") else quantity["value"]
    return {"patient": patient.pk, "timestamp": when, "value": value, "unit": quantity.get("code") or quantity.get("unit")}


class PatientCgmBundleSubmitApi(APIView):
    """`$submit-cgm-bundle` (HL7 CGM IG): import the sensor readings of a Bundle; the patient's own app only.

    Answers like `POST readings`: `{"accepted", "duplicates", "rejected": [{"index", "errors"}], "ignored"}`,
    where `index` is the Bundle entry and `ignored` counts summary Observations (recomputed, not imported).
    """

    @extend_schema(request=inline_serializer("FhirBundleIn", {"resourceType": serializers.CharField()}),
                   responses={200: FHIR_SUBMIT_OUTCOME, 400: batch_or_validation_error(FHIR_SUBMIT_OUTCOME)})
    def post(self, request: Request, patient_id: int) -> Response:
        patient = patient_get_for_user(user=request.user, patient_id=patient_id)  # type: ignore[arg-type]
        if request.user.role != Role.PATIENT:  # type: ignore[union-attr]
            raise PermissionDenied(ERR_OWN_APP_ONLY)
        bundle = request.data
        entries = bundle.get("entry") if isinstance(bundle, dict) else None
        if (not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle"
                or bundle.get("type") not in ("transaction", "collection") or not isinstance(entries, list) or not entries):
            raise ValidationError({"non_field_errors": [ERR_NOT_A_BUNDLE]})
        limit = settings.MAX_BATCH_ITEMS
        if len(entries) > limit:
            raise BatchTooLarge(ERR_TOO_MANY_ENTRIES.format(limit=limit))
        items: list[dict[str, Any]] = []
        entry_of_item: list[int] = []
        rejected: list[dict[str, Any]] = []
        ignored = 0
        for index, entry in enumerate(entries):
            item = reading_item_from_observation(entry.get("resource") if isinstance(entry, dict) else None, patient=patient)
            if item is None:
                ignored += 1
            elif "timestamp" in item:
                items.append(item)
                entry_of_item.append(index)
            else:
                rejected.append({"index": index, "errors": item})
        accepted = duplicates = 0
        if items:
            outcome = reading_batch_ingest(uploader=Uploader(source=ReadingSource.APP, patient_id=patient.pk), items=items)
            accepted, duplicates = outcome.accepted, outcome.duplicates
            rejected += [{"index": entry_of_item[r["index"]], "errors": r["errors"]} for r in outcome.rejected]
        rejected.sort(key=lambda r: r["index"])
        body = {"accepted": accepted, "duplicates": duplicates, "rejected": rejected, "ignored": ignored}
        all_rejected = len(rejected) == len(entries) - ignored and not accepted and not duplicates and rejected
        return Response(body, status=status.HTTP_400_BAD_REQUEST if all_rejected else status.HTTP_200_OK)
