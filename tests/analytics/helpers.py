"""Fast test data: readings written with bulk_create (no ingest pipeline, so no forecasting run)."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
from django.utils import timezone

from glucoscope.patients.models import Patient
from glucoscope.readings.models import GlucoseReading, ReadingSource, SensorFlag


def add_readings(patient: Patient, values: list[float | str], *, end: datetime | None = None,
                 step_minutes: int = 5) -> list[datetime]:
    """Readings every ``step_minutes`` ending at ``end`` (default: 2 minutes ago); "Low"/"High" become flags."""
    end = end or timezone.now() - timedelta(minutes=2)
    times = [end - timedelta(minutes=step_minutes * (len(values) - 1 - i)) for i in range(len(values))]
    rows = []
    for t, v in zip(times, values, strict=True):
        flag = {"Low": SensorFlag.LOW, "High": SensorFlag.HIGH}.get(v, SensorFlag.NONE) if isinstance(v, str) else SensorFlag.NONE
        rows.append(GlucoseReading(patient=patient, measured_at=t, value_mgdl=None if flag else float(v),
                                   sensor_flag=flag, source=ReadingSource.APP, received_at=t))
    GlucoseReading.objects.bulk_create(rows, batch_size=5000)
    return times


def synthetic_days(days: int, *, seed: int = 0, base: float = 130.0, amplitude: float = 60.0) -> list[float]:
    """A plausible daily curve with noise, clipped to the numeric sensor range, every 5 minutes."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * 288) * 5 / 60.0
    x = base + amplitude * np.sin(2 * np.pi * t / 24.0) + rng.normal(0, 15, t.size)
    return [float(v) for v in np.clip(x, 40, 400).round(1)]
