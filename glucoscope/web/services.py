"""Refreshing the triage day counts (glucoscope/web/models.py). Idempotent upserts, safe to run concurrently."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta

from django.db.models import Count, Q
from django.db.models.functions import TruncDate
from django.utils import timezone

from glucoscope.readings.models import GlucoseReading, PatientSummary, SensorFlag
from glucoscope.web.models import PatientDayCounts

# The triage table compares the last 14 days with the 14 before (Battelino 2019 reporting period).
TRIAGE_DAYS = 28
# Patients whose summary changed this recently are refreshed by the 5-minute beat task; twice the
# interval, so one late run loses nothing (the nightly full refresh heals longer outages).
RECENT_WINDOW = timedelta(minutes=10)
CHUNK = 200

COUNT_FIELDS = ("n", "very_low", "low", "in_range", "high", "very_high")


def range_counts() -> dict[str, Count]:
    """Conditional counts per consensus range; sensor Low/High count as 40/400 mg/dL (docs/metrics.md)."""
    value = Q(sensor_flag=SensorFlag.NONE)
    return {
        "n": Count("pk"),
        "very_low": Count("pk", filter=Q(sensor_flag=SensorFlag.LOW) | (value & Q(value_mgdl__lt=54))),
        "low": Count("pk", filter=value & Q(value_mgdl__gte=54, value_mgdl__lt=70)),
        "in_range": Count("pk", filter=value & Q(value_mgdl__gte=70, value_mgdl__lte=180)),
        "high": Count("pk", filter=value & Q(value_mgdl__gt=180, value_mgdl__lte=250)),
        "very_high": Count("pk", filter=Q(sensor_flag=SensorFlag.HIGH) | (value & Q(value_mgdl__gt=250))),
    }


def day_counts_refresh(*, patient_ids: Sequence[int] | None, days: int, now: datetime | None = None) -> int:
    """Recount the last ``days`` UTC days (today included) for the patients (all when None); returns rows written."""
    now = now or timezone.now()
    first_day = (now.astimezone(UTC) - timedelta(days=days - 1)).date()
    start = datetime.combine(first_day, time(0), tzinfo=UTC)
    # Everyone at once is one grouped scan; named patients go in chunks to keep each statement small.
    chunks: list[list[int] | None] = [None] if patient_ids is None else [
        list(patient_ids[a : a + CHUNK]) for a in range(0, len(patient_ids), CHUNK)
    ]
    written = 0
    for chunk in chunks:
        readings = GlucoseReading.objects.filter(is_calibration=False, measured_at__gte=start)
        if chunk is not None:
            readings = readings.filter(patient_id__in=chunk)
        rows = [
            PatientDayCounts(patient_id=r["patient_id"], day=r["day"], refreshed_at=now,
                             **{f: r[f] for f in COUNT_FIELDS})  # type: ignore[literal-required]
            for r in readings.annotate(day=TruncDate("measured_at", tzinfo=UTC)).order_by()
            .values("patient_id", "day").annotate(**range_counts())
        ]
        PatientDayCounts.objects.bulk_create(
            rows, batch_size=2000, update_conflicts=True, unique_fields=["patient", "day"],
            update_fields=[*COUNT_FIELDS, "refreshed_at"],
        )
        written += len(rows)
    return written


def day_counts_refresh_recent(*, now: datetime | None = None) -> int:
    """Today and yesterday for the patients whose data changed in the last minutes (after each ingest)."""
    now = now or timezone.now()
    recent = list(PatientSummary.objects.filter(computed_at__gte=now - RECENT_WINDOW).values_list("patient_id", flat=True))
    return day_counts_refresh(patient_ids=recent, days=2, now=now) if recent else 0
