"""Native REST API v1. Views are thin: parse the request, call a selector or service, shape the response."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import CursorPagination, LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.authentication import VendorPrincipal
from api.permissions import CanUploadReadings
from api.query import StrictPageSizeMixin, glucose_unit, page_size_parameter, time_range
from api.schema import BATCH_OUTCOME_SCHEMA, READING_BATCH, TREATMENT_BATCH, batch_or_validation_error
from glucoscope.audit.context import audit_note
from glucoscope.patients.models import DiabetesType, Patient, Role, User
from glucoscope.patients.selectors import patient_get_for_user, patients_visible_to
from glucoscope.readings import selectors
from glucoscope.readings.batches import BatchOutcome, Uploader, reading_batch_ingest
from glucoscope.readings.models import GlucoseReading, ReadingSource, Treatment
from glucoscope.readings.treatments import treatment_batch_ingest

ERR_EMPTY_BATCH = "Send a JSON object or an array of 1 to {limit} items."
ERR_BATCH_TOO_LARGE = "At most {limit} items per request; split the batch."

START_END = [
    OpenApiParameter("start", str, description="ISO 8601 with offset, or epoch ms. Default: end − 24 h."),
    OpenApiParameter("end", str, description="ISO 8601 with offset, or epoch ms. Default: now."),
]


# Response shapes for the schema only (responses are built by hand below; tests/fuzz checks they match).
class PatientOut(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    username = serializers.CharField()
    name = serializers.CharField(allow_blank=True)
    time_zone = serializers.CharField()
    diabetes_type = serializers.ChoiceField([c.value for c in DiabetesType])
    birth_year = serializers.IntegerField(allow_null=True, min_value=1900, max_value=2100)
    preferred_unit = serializers.ChoiceField(["mg/dL", "mmol/L"])
    target_low_mgdl = serializers.IntegerField()
    target_high_mgdl = serializers.IntegerField()


class MeOut(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    username = serializers.CharField()
    name = serializers.CharField(allow_blank=True)
    email = serializers.CharField(allow_blank=True)
    role = serializers.ChoiceField([c.value for c in Role])
    patient = PatientOut(allow_null=True, help_text="Present for patient accounts.")


class PatientPageOut(serializers.Serializer):  # type: ignore[type-arg]
    count = serializers.IntegerField(min_value=0)
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    results = PatientOut(many=True)


class ReadingOut(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    timestamp = serializers.CharField()
    value = serializers.FloatField(allow_null=True, help_text="Null when the sensor said Low or High (`sensor_flag`).")
    unit = serializers.ChoiceField(["mg/dL", "mmol/L"])
    sensor_flag = serializers.ChoiceField(["low", "high"], allow_null=True)
    trend = serializers.CharField(allow_null=True)
    trend_rate = serializers.FloatField(allow_null=True)
    is_calibration = serializers.BooleanField()
    device_id = serializers.IntegerField(allow_null=True)

    def get_fields(self) -> dict[str, serializers.Field]:  # type: ignore[type-arg]
        # `source` is a Field attribute, so the `source` key cannot be declared as a class attribute.
        return {**super().get_fields(), "source": serializers.ChoiceField([c.value for c in ReadingSource])}


class ReadingPageOut(serializers.Serializer):  # type: ignore[type-arg]
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    results = ReadingOut(many=True)
    start = serializers.CharField()
    end = serializers.CharField()
    unit = serializers.ChoiceField(["mg/dL", "mmol/L"])


class SummaryOut(serializers.Serializer):  # type: ignore[type-arg]
    patient = serializers.IntegerField()
    unit = serializers.ChoiceField(["mg/dL", "mmol/L"])
    latest = ReadingOut(allow_null=True)
    latest_age_seconds = serializers.IntegerField(allow_null=True)
    trend = serializers.CharField(allow_null=True)
    readings_last_24h = serializers.IntegerField(min_value=0)
    computed_at = serializers.CharField(allow_null=True)


def batch_items(data: Any) -> list[Any]:
    """A single object or an array of 1..MAX_BATCH_ITEMS; 413 beyond that."""
    limit = settings.MAX_BATCH_ITEMS
    items = [data] if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ValidationError({"non_field_errors": [ERR_EMPTY_BATCH.format(limit=limit)]})
    if len(items) > limit:
        raise BatchTooLarge(ERR_BATCH_TOO_LARGE.format(limit=limit))
    return items


class BatchTooLarge(ValidationError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE


def batch_response(outcome: BatchOutcome, *, item_count: int) -> Response:
    """200 with the item-by-item outcome; 400 (same body) when not a single item was valid."""
    all_rejected = bool(outcome.rejected) and len(outcome.rejected) == item_count
    return Response(outcome.as_response(), status=status.HTTP_400_BAD_REQUEST if all_rejected else status.HTTP_200_OK)


def patient_json(patient: Patient) -> dict[str, Any]:
    return {
        "id": patient.pk,
        "username": patient.user.username,
        "name": patient.user.get_full_name(),
        "time_zone": patient.time_zone,
        "diabetes_type": patient.diabetes_type,
        "birth_year": patient.birth_year,
        "preferred_unit": patient.preferred_unit,
        "target_low_mgdl": patient.target_low_mgdl,
        "target_high_mgdl": patient.target_high_mgdl,
    }


def reading_json(reading: GlucoseReading, unit: str) -> dict[str, Any]:
    return {
        "id": reading.pk,
        "timestamp": reading.measured_at.isoformat(),
        "value": selectors.glucose_in_unit(reading.value_mgdl, unit),
        "unit": unit,
        "sensor_flag": reading.sensor_flag or None,
        "trend": reading.direction or None,
        "trend_rate": reading.trend_rate,
        "is_calibration": reading.is_calibration,
        "source": reading.source,
        "device_id": reading.device_id,
    }


def treatment_json(treatment: Treatment) -> dict[str, Any]:
    return {
        "id": treatment.pk,
        "timestamp": treatment.occurred_at.isoformat(),
        "kind": treatment.kind,
        "carbs_g": treatment.carbs_g,
        "insulin_units": treatment.insulin_units,
        "basal_rate_u_per_h": treatment.basal_rate_u_per_h,
        "duration_minutes": treatment.duration_minutes,
        "note": treatment.note,
        "event_type": treatment.event_type,
        "entered_by": treatment.entered_by_label,
        "source": treatment.source,
    }


class MeApi(APIView):
    audit_self = True  # the profile is the patient's record (audit log: glucoscope/audit/middleware.py)

    @extend_schema(responses=MeOut)
    def get(self, request: Request) -> Response:
        user: User = request.user  # type: ignore[assignment]
        patient = getattr(user, "patient", None)
        return Response(
            {
                "id": user.pk,
                "username": user.username,
                "name": user.get_full_name(),
                "email": user.email,
                "role": user.role,
                "patient": patient_json(patient) if patient else None,
            }
        )


class PatientListApi(APIView):
    class Pagination(LimitOffsetPagination):
        default_limit = 100
        max_limit = 1000

    @extend_schema(responses=PatientPageOut)
    def get(self, request: Request) -> Response:
        patients = patients_visible_to(user=request.user).select_related("user").order_by("pk")  # type: ignore[arg-type]
        paginator = self.Pagination()
        page = paginator.paginate_queryset(patients, request, view=self)
        audit_note(patient_ids=[p.pk for p in page or []])  # a list read is a read of every listed patient
        return paginator.get_paginated_response([patient_json(p) for p in page or []])


class ReadingIngestApi(APIView):
    """Bulk ingest from a vendor key or the patient's own app. Idempotent; near duplicates (<60 s, same value) stored once."""

    permission_classes = [CanUploadReadings]

    @extend_schema(request=READING_BATCH, responses={200: BATCH_OUTCOME_SCHEMA, 400: batch_or_validation_error()})
    def post(self, request: Request) -> Response:
        items = batch_items(request.data)
        principal = request.user
        if isinstance(principal, VendorPrincipal):
            uploader = Uploader(source=ReadingSource.VENDOR, vendor_id=principal.vendor_id)
        else:
            uploader = Uploader(source=ReadingSource.APP, patient_id=principal.patient.pk)  # type: ignore[union-attr]
        outcome = reading_batch_ingest(uploader=uploader, items=items)
        audit_note(patient_ids=outcome.patient_ids)  # one entry per patient per batch
        return batch_response(outcome, item_count=len(items))


class TreatmentIngestApi(APIView):
    """Carbohydrates (g), insulin (U), exercise and notes, from the patient, a caregiver or the care team."""

    @extend_schema(request=TREATMENT_BATCH, responses={200: BATCH_OUTCOME_SCHEMA, 400: batch_or_validation_error()})
    def post(self, request: Request) -> Response:
        items = batch_items(request.data)
        outcome = treatment_batch_ingest(user=request.user, items=items)  # type: ignore[arg-type]
        audit_note(patient_ids=outcome.patient_ids)
        return batch_response(outcome, item_count=len(items))


class ReadingCursorPagination(StrictPageSizeMixin, CursorPagination):
    ordering = "measured_at"
    page_size = 288  # one day of 5-minute readings
    page_size_query_param = "page_size"

    @property
    def max_page_size(self) -> int:  # type: ignore[override]
        return settings.READINGS_MAX_PAGE_SIZE


class PatientReadingsApi(APIView):
    @extend_schema(
        parameters=[*START_END, OpenApiParameter("unit", str, enum=["mg/dL", "mmol/L"]), page_size_parameter(settings.READINGS_MAX_PAGE_SIZE, ReadingCursorPagination.page_size)],
        responses=ReadingPageOut,
    )
    def get(self, request: Request, patient_id: int) -> Response:
        patient = patient_get_for_user(user=request.user, patient_id=patient_id)  # type: ignore[arg-type]
        start, end = time_range(request)
        unit = glucose_unit(request, default=patient.preferred_unit)
        paginator = ReadingCursorPagination()
        page = paginator.paginate_queryset(selectors.readings_in_range(patient=patient, start=start, end=end), request, view=self)
        response = paginator.get_paginated_response([reading_json(r, unit) for r in page or []])
        response.data.update({"start": start.isoformat(), "end": end.isoformat(), "unit": unit})
        return response


class PatientTreatmentsApi(APIView):
    class Pagination(StrictPageSizeMixin, CursorPagination):
        ordering = "occurred_at"
        page_size = 200
        page_size_query_param = "page_size"
        max_page_size = 1000

    @extend_schema(parameters=[*START_END, page_size_parameter(1000, 200)],
                   responses=inline_serializer("TreatmentPage", {"results": serializers.ListField()}))
    def get(self, request: Request, patient_id: int) -> Response:
        patient = patient_get_for_user(user=request.user, patient_id=patient_id)  # type: ignore[arg-type]
        start, end = time_range(request)
        paginator = self.Pagination()
        page = paginator.paginate_queryset(selectors.treatments_in_range(patient=patient, start=start, end=end), request, view=self)
        return paginator.get_paginated_response([treatment_json(t) for t in page or []])


class PatientSummaryApi(APIView):
    """Latest reading, its age, trend, and the count of readings in the 24 h before `computed_at`."""

    @extend_schema(parameters=[OpenApiParameter("unit", str, enum=["mg/dL", "mmol/L"])],
                   responses=SummaryOut)
    def get(self, request: Request, patient_id: int) -> Response:
        patient = patient_get_for_user(user=request.user, patient_id=patient_id)  # type: ignore[arg-type]
        unit = glucose_unit(request, default=patient.preferred_unit)
        summary = selectors.patient_summary_get(patient=patient)
        latest = summary.latest_reading if summary else None
        now = timezone.now()
        return Response(
            {
                "patient": patient.pk,
                "unit": unit,
                "latest": reading_json(latest, unit) if latest else None,
                "latest_age_seconds": round((now - latest.measured_at).total_seconds()) if latest else None,
                "trend": (latest.direction or None) if latest else None,
                "readings_last_24h": summary.readings_last_24h if summary else 0,
                "computed_at": summary.computed_at.isoformat() if summary else None,
            }
        )
