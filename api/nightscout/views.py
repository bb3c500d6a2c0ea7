"""Nightscout-compatible API v1 (GUIDE.md §6), multi-patient: the api-secret identifies the patient.

Uploaders (xDrip+, Loop, AndroidAPS, share2nightscout-bridge) point their Nightscout URL at
`/nightscout` and keep working unchanged. Extra fields are ignored; both spellings of
direction values are accepted; gzip bodies are decoded by the middleware.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.authentication import NightscoutAuthentication, NightscoutPrincipal
from api.permissions import IsNightscoutUploader
from api.schema import VALIDATION_ERROR_SCHEMA
from api.views import batch_items
from glucoscope.audit.context import audit_note
from glucoscope.patients.models import Patient
from glucoscope.readings import selectors, services
from glucoscope.readings.batches import Uploader, reading_batch_ingest, readings_matching_stored
from glucoscope.readings.models import GlucoseReading, NightscoutDocument, ReadingSource, SensorFlag, Treatment
from glucoscope.readings.treatments import nightscout_treatment_batch_ingest
from glucoscope.readings.validation import (
    ERR_NOT_OBJECT,
    FieldErrors,
    ReadingInput,
    parse_direction,
    parse_glucose,
    parse_timestamp,
)

# Nightscout documents are free-form JSON that uploaders define; the schema states only what GlucoScope adds
# (`_id`s, the entry fields it serves) and leaves the rest open rather than guessing.
_OBJECT_ID = {"type": "string", "pattern": "^[0-9a-f]{24}$"}
NS_STORED = {"type": "array", "items": {"type": "object", "properties": {"_id": _OBJECT_ID}, "required": ["_id"]}}
NS_ENTRIES = {"type": "array", "items": {
    "type": "object",
    "properties": {"_id": _OBJECT_ID, "date": {"type": "integer"}, "mills": {"type": "integer"},
                   "dateString": {"type": "string"}, "type": {"type": "string", "enum": ["sgv", "mbg"]},
                   "sgv": {"type": "integer"}, "mbg": {"type": "integer"}, "direction": {"type": "string"},
                   "trend": {"type": "integer"}, "delta": {"type": "number"}},
    "required": ["_id", "date", "dateString", "type"],
}}
NS_REJECTED = {"oneOf": [
    {"type": "object", "description": "No item was valid; `rejected` lists each with its index and reason.",
     "properties": {"status": {"type": "integer", "enum": [400]}, "message": {"type": "string"},
                    "rejected": {"type": "array", "items": {"type": "object"}}},
     "required": ["status", "message", "rejected"]},
    VALIDATION_ERROR_SCHEMA,
]}
NS_OBJECT = {"type": "object"}
_TOKEN = OpenApiParameter("token", str, description="A Nightscout-style access token, instead of the api-secret header.")
_COUNT = OpenApiParameter("count", {"type": "integer", "minimum": 0, "maximum": 10_000},
                          description="How many, newest first (default 10; 0 means the maximum, 10,000).")


def _find(*fields: str) -> list[OpenApiParameter]:
    return [OpenApiParameter(f"find[{field}][{op}]", str, description="Epoch ms or ISO 8601 (no offset: UTC).")
            for field in fields for op in ("$gte", "$gt", "$lte", "$lt")]


def ns_schema(*, parameters: list[OpenApiParameter] | None = None, request: Any = None, responses: Any) -> Any:
    return extend_schema(parameters=[_TOKEN, *(parameters or [])], request=request, responses=responses,
                         tags=["nightscout"])

DEFAULT_COUNT = 10
MAX_COUNT = 10_000
# Nightscout's own convention for sensor limits, which its clients display as LOW and HIGH.
NS_SGV_LOW = 39
NS_SGV_HIGH = 401
# A delta is only meaningful between consecutive readings; across a gap we report 0.
DELTA_MAX_GAP = timedelta(minutes=15)
ERR_COUNT = "count must be a whole number between 0 and 10000 (0 means the maximum)."
GLUCOSE_ENTRY_TYPES = {"sgv", "mbg"}
_DEXCOM_TREND = {
    "NONE": 0, "DoubleUp": 1, "SingleUp": 2, "FortyFiveUp": 3, "Flat": 4, "FortyFiveDown": 5,
    "SingleDown": 6, "DoubleDown": 7, "NOT COMPUTABLE": 8, "RATE OUT OF RANGE": 9,
}


def object_id(pk: int, collection: str = "") -> str:
    """A 24-hex id shaped like Nightscout's Mongo ObjectIds, which Loop and xDrip+ parse."""
    prefix = {"": 0, "treatment": 1, "devicestatus": 2, "profile": 3, "entry": 4}[collection]
    return f"{prefix:02x}{pk:022x}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(dt_timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def parse_nightscout_entry(index: int, item: Any, now: datetime) -> ReadingInput | FieldErrors:
    if not isinstance(item, dict):
        return {"non_field_errors": [ERR_NOT_OBJECT]}
    errors: FieldErrors = {}
    is_meter = item.get("type") == "mbg"
    field = "mbg" if is_meter else "sgv"
    raw_time = item.get("date") if item.get("date") is not None else item.get("dateString") or item.get("sysTime")
    measured_at = parse_timestamp(raw_time, now=now, errors=errors, field="date")
    value, flag = parse_glucose(item.get(field), unit="mg/dL", errors=errors, field=field)
    direction = parse_direction(item.get("direction") or item.get("trend"), errors=errors, field="direction")
    if errors or measured_at is None:
        return errors
    return ReadingInput(index, None, None, measured_at, value, flag, direction, None, is_calibration=is_meter)


def _count(request: Request) -> int:
    raw = request.query_params.get("count")
    if raw is None:
        return DEFAULT_COUNT
    if not raw.isdigit() or int(raw) > MAX_COUNT:
        raise ValidationError({"count": [ERR_COUNT]})
    return int(raw) or MAX_COUNT


def _find_range(request: Request, fields: tuple[str, ...]) -> tuple[datetime | None, datetime | None]:
    """Mongo-style `find[date][$gte]=<ms>` / `find[dateString][$lte]=<ISO>` filters."""
    far_future = timezone.now() + timedelta(days=3650)
    start: datetime | None = None
    end: datetime | None = None
    errors: FieldErrors = {}
    for field in fields:
        for operator in ("$gte", "$gt", "$lte", "$lt"):
            key = f"find[{field}][{operator}]"
            raw = request.query_params.get(key)
            if raw is None:
                continue
            text = raw.strip()
            # Nightscout compares dateStrings as text, so clients often omit the offset: read those as UTC.
            if not text.isdigit() and text[-1:].isdigit() and "+" not in text[10:] and "-" not in text[10:]:
                text += "Z"
            moment = parse_timestamp(text, now=far_future, errors=errors, field=key)
            if moment is None:
                continue
            if operator.startswith("$g"):
                start = moment + (timedelta(microseconds=1) if operator == "$gt" else timedelta(0))
            else:
                end = moment - (timedelta(microseconds=1) if operator == "$lt" else timedelta(0))
    if errors:
        raise ValidationError(errors)
    return start, end


class NightscoutView(APIView):
    authentication_classes = [NightscoutAuthentication]
    permission_classes = [IsNightscoutUploader]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        # The credential names one patient: every request that passed it reads or writes their data.
        audit_note(patient_ids=[request.user.patient_id])  # type: ignore[union-attr]

    def patient(self, request: Request) -> Patient:
        principal: NightscoutPrincipal = request.user  # type: ignore[assignment]
        return Patient.objects.get(pk=principal.patient_id)


def entry_json(reading: GlucoseReading, previous: GlucoseReading | None) -> dict[str, Any]:
    moment = reading.measured_at
    common = {"_id": object_id(reading.pk), "date": _ms(moment), "mills": _ms(moment), "dateString": _iso(moment),
              "sysTime": _iso(moment), "utcOffset": 0, "device": f"glucoscope-{reading.source}"}
    if reading.is_calibration:
        return {**common, "type": "mbg", "mbg": round(reading.value_mgdl or 0)}
    if reading.sensor_flag == SensorFlag.LOW:
        sgv = NS_SGV_LOW
    elif reading.sensor_flag == SensorFlag.HIGH:
        sgv = NS_SGV_HIGH
    else:
        sgv = round(reading.value_mgdl or 0)
    delta = 0.0
    if (
        previous is not None and reading.value_mgdl is not None and previous.value_mgdl is not None
        and moment - previous.measured_at <= DELTA_MAX_GAP
    ):
        delta = round(reading.value_mgdl - previous.value_mgdl, 1)
    direction = reading.direction or "NONE"
    return {**common, "type": "sgv", "sgv": sgv, "direction": direction, "trend": _DEXCOM_TREND.get(direction, 0), "delta": delta}


class EntriesApi(NightscoutView):
    """GET/POST entries (also `entries.json`); POST answers with the stored entries and their `_id`s, as Loop expects."""

    only_sgv = False

    @ns_schema(parameters=[_COUNT, *_find("date", "dateString")], responses={200: NS_ENTRIES})
    def get(self, request: Request) -> Response:
        patient = self.patient(request)
        start, end = _find_range(request, ("date", "dateString"))
        count = _count(request)
        readings = GlucoseReading.objects.filter(patient=patient)
        if self.only_sgv:
            readings = readings.filter(is_calibration=False)
        if start is not None:
            readings = readings.filter(measured_at__gte=start)
        if end is not None:
            readings = readings.filter(measured_at__lte=end)
        # One extra row, so the oldest returned entry still gets its delta.
        rows = list(readings.order_by("-measured_at")[: count + 1])
        sgv_rows = [r for r in rows if not r.is_calibration]
        previous_of = {sgv_rows[i].pk: sgv_rows[i + 1] for i in range(len(sgv_rows) - 1)}
        return Response([entry_json(r, previous_of.get(r.pk)) for r in rows[:count]])

    @ns_schema(request=OpenApiTypes.ANY, responses={200: NS_STORED, 400: NS_REJECTED})
    def post(self, request: Request) -> Response:
        patient = self.patient(request)
        items = batch_items(request.data)
        glucose_items = [item for item in items if not isinstance(item, dict) or item.get("type", "sgv") in GLUCOSE_ENTRY_TYPES]
        other_items = [item for item in items if isinstance(item, dict) and item.get("type", "sgv") not in GLUCOSE_ENTRY_TYPES]
        outcome = reading_batch_ingest(
            uploader=Uploader(source=ReadingSource.NIGHTSCOUT, patient_id=patient.pk),
            items=glucose_items,
            parse_item=parse_nightscout_entry,
        )
        stored = readings_matching_stored(patient_id=patient.pk, readings=outcome.stored)
        body: list[dict[str, Any]] = [
            {**glucose_items[reading.index], "_id": object_id(row.pk)}
            for reading, row in zip(outcome.stored, stored, strict=True)
            if row is not None
        ]
        body += [
            {**document.document, "_id": object_id(document.pk, "entry")}
            for document in _store_documents(patient, NightscoutDocument.Collection.ENTRY, other_items)
        ]
        if outcome.rejected and not body:
            return Response({"status": 400, "message": "No valid entries.", "rejected": outcome.rejected}, status=400)
        headers = {"X-Rejected-Count": str(len(outcome.rejected))} if outcome.rejected else None
        return Response(body, headers=headers)


class EntriesSgvApi(EntriesApi):
    only_sgv = True


class EntriesCurrentApi(NightscoutView):
    @ns_schema(responses={200: NS_ENTRIES})
    def get(self, request: Request) -> Response:
        latest = selectors.readings_latest(patient=self.patient(request), limit=2)
        return Response([entry_json(latest[0], latest[1] if len(latest) > 1 else None)] if latest else [])


def _store_documents(patient: Patient, collection: str, items: list[Any]) -> list[NightscoutDocument]:
    return services.nightscout_documents_store(patient_id=patient.pk, collection=collection, items=items)


class DocumentCollectionApi(NightscoutView):
    """devicestatus and profile: kept as sent, read back newest first."""

    collection: str = ""

    @ns_schema(parameters=[_COUNT, *_find("created_at", "date")], responses={200: NS_STORED})
    def get(self, request: Request) -> Response:
        start, end = _find_range(request, ("created_at", "date"))
        documents = selectors.nightscout_documents(
            patient=self.patient(request), collection=self.collection, start=start, end=end, limit=_count(request)
        )
        return Response([{**d.document, "_id": object_id(d.pk, self.collection)} for d in documents])

    @ns_schema(request=OpenApiTypes.ANY, responses={200: NS_STORED})
    def post(self, request: Request) -> Response:
        items = batch_items(request.data)
        if not all(isinstance(item, dict) for item in items):
            raise ValidationError({"non_field_errors": [ERR_NOT_OBJECT]})
        documents = _store_documents(self.patient(request), self.collection, items)
        return Response([{**d.document, "_id": object_id(d.pk, self.collection)} for d in documents])

    @ns_schema(request=OpenApiTypes.ANY, responses={200: NS_STORED})
    def put(self, request: Request) -> Response:
        return self.post(request)


class DeviceStatusApi(DocumentCollectionApi):
    collection = NightscoutDocument.Collection.DEVICESTATUS


class ProfileApi(DocumentCollectionApi):
    collection = NightscoutDocument.Collection.PROFILE


def treatment_ns_json(treatment: Treatment) -> dict[str, Any]:
    body: dict[str, Any] = {
        "_id": object_id(treatment.pk, "treatment"),
        "eventType": treatment.event_type or {"carbs": "Carb Correction", "bolus": "Correction Bolus", "basal": "Temp Basal",
                                               "exercise": "Exercise", "note": "Note"}[treatment.kind],
        "created_at": _iso(treatment.occurred_at),
        "timestamp": _iso(treatment.occurred_at),
        "enteredBy": treatment.entered_by_label,
        "notes": treatment.note,
    }
    if treatment.carbs_g is not None:
        body["carbs"] = treatment.carbs_g
    if treatment.insulin_units is not None:
        body["insulin"] = treatment.insulin_units
    if treatment.basal_rate_u_per_h is not None:
        body["absolute"] = body["rate"] = treatment.basal_rate_u_per_h
    if treatment.duration_minutes is not None:
        body["duration"] = treatment.duration_minutes
    return body


class TreatmentsApi(NightscoutView):
    @ns_schema(parameters=[_COUNT, *_find("created_at", "date", "timestamp")], responses={200: NS_STORED})
    def get(self, request: Request) -> Response:
        start, end = _find_range(request, ("created_at", "date", "timestamp"))
        treatments = Treatment.objects.filter(patient=self.patient(request))
        if start is not None:
            treatments = treatments.filter(occurred_at__gte=start)
        if end is not None:
            treatments = treatments.filter(occurred_at__lte=end)
        return Response([treatment_ns_json(t) for t in treatments.order_by("-occurred_at")[: _count(request)]])

    @ns_schema(request=OpenApiTypes.ANY, responses={200: NS_STORED, 400: NS_REJECTED})
    def post(self, request: Request) -> Response:
        items = batch_items(request.data)
        ids, rejected = nightscout_treatment_batch_ingest(patient_id=self.patient(request).pk, items=items)
        body = [{**items[i], "_id": object_id(pk, "treatment")} for i, pk in enumerate(ids) if pk is not None]
        if rejected and not body:
            return Response({"status": 400, "message": "No valid treatments.", "rejected": rejected}, status=400)
        return Response(body, headers={"X-Rejected-Count": str(len(rejected))} if rejected else None)


class StatusApi(APIView):
    """Public server status, as Nightscout serves it; no patient data unless a credential is sent."""

    authentication_classes = [NightscoutAuthentication]
    permission_classes = [AllowAny]

    @ns_schema(responses={200: NS_OBJECT})
    def get(self, request: Request) -> Response:
        now = timezone.now()
        authorized = isinstance(request.user, NightscoutPrincipal)
        units = "mg/dl"
        if authorized:
            patient = Patient.objects.get(pk=request.user.patient_id)  # type: ignore[union-attr]
            units = "mmol" if patient.preferred_unit == "mmol/L" else "mg/dl"
        return Response({
            "status": "ok", "name": "GlucoScope", "version": "15.0.0-glucoscope",
            "serverTime": _iso(now), "serverTimeEpoch": _ms(now), "apiEnabled": True, "careportalEnabled": True,
            "settings": {"units": units, "enable": ["careportal", "iob", "cob", "ar2"]},
            "authorized": {"canRead": authorized, "canWrite": authorized} if authorized else None,
        })


class VerifyAuthApi(APIView):
    """AndroidAPS and others call this to test their credential; it always answers 200, as Nightscout does."""

    openapi_never_401 = True  # a wrong secret is reported in the body (api/schema.py)

    authentication_classes = [NightscoutAuthentication]
    permission_classes = [AllowAny]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        try:
            super().initial(request, *args, **kwargs)
        except Exception:  # a wrong secret is an answer here, not an error
            request._user = None  # type: ignore[attr-defined]

    @ns_schema(responses={200: NS_OBJECT})
    def get(self, request: Request) -> Response:
        ok = isinstance(request.user, NightscoutPrincipal)
        return Response({"status": 200, "message": {
            "canRead": ok, "canWrite": ok, "isAdmin": False, "message": "OK" if ok else "UNAUTHORIZED",
            "rolefound": "FOUND" if ok else "NOTFOUND", "permissions": "DEFAULT" if ok else "NONE",
        }})


class ExperimentsTestApi(NightscoutView):
    """Loop calls this to check its credential."""

    @ns_schema(responses={200: NS_OBJECT})
    def get(self, request: Request) -> Response:
        return Response({"status": "ok"})
