"""Reads of readings, treatments and summaries. Access is checked by the caller via patients.selectors."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from glucoscope.patients.models import MGDL_PER_MMOLL, Patient
from glucoscope.readings.models import GlucoseReading, NightscoutDocument, PatientSummary, Treatment


def readings_in_range(*, patient: Patient, start: datetime, end: datetime) -> QuerySet[GlucoseReading]:
    """One patient's readings with start <= measured_at < end (the hot query; served by the unique index)."""
    return GlucoseReading.objects.filter(patient=patient, measured_at__gte=start, measured_at__lt=end)


def readings_latest(*, patient: Patient, limit: int) -> list[GlucoseReading]:
    return list(GlucoseReading.objects.filter(patient=patient).order_by("-measured_at")[:limit])


def treatments_in_range(*, patient: Patient, start: datetime, end: datetime) -> QuerySet[Treatment]:
    return Treatment.objects.filter(patient=patient, occurred_at__gte=start, occurred_at__lt=end)


def patient_summary_get(*, patient: Patient) -> PatientSummary | None:
    return PatientSummary.objects.select_related("latest_reading").filter(patient=patient).first()


def nightscout_documents(
    *, patient: Patient, collection: str, start: datetime | None, end: datetime | None, limit: int
) -> list[NightscoutDocument]:
    documents = NightscoutDocument.objects.filter(patient=patient, collection=collection)
    if start is not None:
        documents = documents.filter(created_at__gte=start)
    if end is not None:
        documents = documents.filter(created_at__lte=end)
    return list(documents.order_by("-created_at")[:limit])


def glucose_in_unit(value_mgdl: float | None, unit: str) -> float | None:
    """mg/dL as stored, or mmol/L to one decimal (GUIDE.md §5: 1 mmol/L = 18.016 mg/dL)."""
    if value_mgdl is None:
        return None
    if unit == "mmol/L":
        return round(value_mgdl / MGDL_PER_MMOLL, 1)
    return round(value_mgdl, 1)
