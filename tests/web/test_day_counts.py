"""The triage day table: counts match the metrics, refreshes are idempotent, the beat task picks recent patients."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.utils import timezone

from glucoscope.metrics import time_below_54, time_below_70, time_in_range_70_180
from glucoscope.readings.models import PatientSummary
from glucoscope.web.models import PatientDayCounts
from glucoscope.web.services import day_counts_refresh, day_counts_refresh_recent
from glucoscope.web.tasks import refresh_triage_counts
from tests.analytics.helpers import add_readings
from tests.conftest import World

pytestmark = pytest.mark.django_db
NOON = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def test_counts_per_range_match_the_metrics_and_split_by_utc_day(world: World) -> None:
    values: list[float | str] = ["Low", 50, 60, 69.9, 70, 120, 180, 180.5, 250, 251, "High"]
    add_readings(world.alice, values, end=NOON)
    add_readings(world.alice, [100.0] * 3, end=NOON - timedelta(days=1))
    assert day_counts_refresh(patient_ids=[world.alice.pk], days=3, now=NOON) == 2
    row = PatientDayCounts.objects.get(patient=world.alice, day=NOON.date())
    v = np.array([40, 50, 60, 69.9, 70, 120, 180, 180.5, 250, 251, 400])
    assert row.n == 11
    assert 100 * row.very_low / row.n == pytest.approx(time_below_54(v))
    assert 100 * (row.very_low + row.low) / row.n == pytest.approx(time_below_70(v))
    assert 100 * row.in_range / row.n == pytest.approx(time_in_range_70_180(v))
    assert (row.high, row.very_high) == (2, 2)
    assert PatientDayCounts.objects.get(patient=world.alice, day=NOON.date() - timedelta(days=1)).n == 3


def test_refresh_is_an_idempotent_upsert(world: World) -> None:
    add_readings(world.alice, [100.0] * 5, end=NOON)
    day_counts_refresh(patient_ids=None, days=2, now=NOON)
    add_readings(world.alice, [300.0], end=NOON + timedelta(minutes=30))
    day_counts_refresh(patient_ids=None, days=2, now=NOON + timedelta(hours=1))
    day_counts_refresh(patient_ids=None, days=2, now=NOON + timedelta(hours=1))
    row = PatientDayCounts.objects.get(patient=world.alice)
    assert (row.n, row.very_high) == (6, 1)


def test_the_beat_task_refreshes_patients_with_fresh_summaries(world: World) -> None:
    add_readings(world.alice, [100.0] * 5)
    add_readings(world.bob, [100.0] * 5)
    now = timezone.now()
    PatientSummary.objects.create(patient=world.alice, computed_at=now)
    PatientSummary.objects.create(patient=world.bob, computed_at=now - timedelta(hours=1))
    assert day_counts_refresh_recent() >= 1
    assert set(PatientDayCounts.objects.values_list("patient_id", flat=True)) == {world.alice.pk}
    assert refresh_triage_counts.delay(full=True).get() >= 2
    assert set(PatientDayCounts.objects.values_list("patient_id", flat=True)) == {world.alice.pk, world.bob.pk}
    assert refresh_triage_counts.name.startswith("forecasting.")
