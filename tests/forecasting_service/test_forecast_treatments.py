"""The worker feeds logged carbohydrate and bolus insulin to the model (its treatment channels).

Each stored forecast is compared with the model called directly (forecasting/ml, no Django) on
the per-reading channels the shared CSV format would carry: a treatment counts at the first
reading at or after it, and only patients who log treatments have the "treatments known" flag.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest
from django.test import TestCase
from django.utils import timezone

from forecasting import services
from forecasting.ml.data import SubjectReadings
from forecasting.models import Forecast
from glucoscope.readings.models import GlucoseReading, PatientOutbox, ReadingSource
from glucoscope.readings.treatments import treatment_batch_ingest
from tests.conftest import World

pytestmark = pytest.mark.django_db

READINGS = 72  # six hours, every 5 minutes


def _values(phase: int) -> list[float]:
    return [130.0 + 25.0 * np.sin((k + phase) / 9.0) for k in range(READINGS)]


def _store_readings(world: World, now: datetime) -> list[datetime]:
    """The same 6 h series for alice and bob, in UTC; returns the reading times (newest 1 min ago)."""
    times = [now - timedelta(minutes=5 * (READINGS - 1 - k) + 1) for k in range(READINGS)]
    for patient in (world.alice, world.bob):
        patient.time_zone = "UTC"
        patient.save(update_fields=["time_zone"])
        GlucoseReading.objects.bulk_create([
            GlucoseReading(patient=patient, measured_at=moment, value_mgdl=value, source=ReadingSource.APP, received_at=now)
            for moment, value in zip(times, _values(0), strict=True)
        ])
    return times


def _log(world: World, **item: object) -> None:
    outcome = treatment_batch_ingest(user=world.alice.user, items=[item])
    assert outcome.accepted == 1, outcome.as_response()


def _direct_p50(times: list[datetime], carbs: np.ndarray | None, insulin: np.ndarray | None) -> list[float]:
    """The model's median, called without the service, on the CSV form of the same data."""
    forecaster = services.forecaster_for(services.model_version_active())
    subject = SubjectReadings(
        subject_id="direct", times=np.array([int(t.timestamp()) for t in times], dtype=np.int64),
        glucose=np.array(_values(0)), flags=np.zeros(READINGS, dtype=np.int8), carbs=carbs, insulin=insulin,
    )
    [result] = forecaster.forecast_patients([subject])
    assert result.status == "ok"
    return [point.p50 for point in result.points]


def _stored_p50(forecast: Forecast) -> list[float]:
    return [point["p50"] for point in forecast.points]


def _assert_close(stored: list[float], direct: list[float]) -> None:
    # Stored to 0.1 mg/dL; the batch of two and the batch of one may differ in float32 rounding.
    assert len(stored) == len(direct) == 24
    assert all(abs(a - b) <= 0.1 + 1e-6 for a, b in zip(stored, direct, strict=True)), (stored, direct)


def test_a_logged_meal_and_bolus_reach_the_model_at_the_reading_after_them(world: World) -> None:
    now = timezone.now().replace(microsecond=0)
    times = _store_readings(world, now)
    # 12 and 7 minutes before the newest reading: they count at the readings 10 and 5 minutes before it.
    _log(world, kind="carbs", carbs_g=60, timestamp=(times[-1] - timedelta(minutes=12)).isoformat())
    _log(world, kind="bolus", insulin_units=2.5, timestamp=(times[-1] - timedelta(minutes=7)).isoformat())
    forecasts = {f.patient_id: f for f in services.patients_forecast(patient_ids=[world.alice.pk, world.bob.pk], now=now)}

    carbs, insulin = np.zeros(READINGS), np.zeros(READINGS)
    carbs[-3], insulin[-2] = 60.0, 2.5
    _assert_close(_stored_p50(forecasts[world.alice.pk]), _direct_p50(times, carbs, insulin))
    # Bob logged nothing: glucose alone, although he shares the batch and the glucose series.
    _assert_close(_stored_p50(forecasts[world.bob.pk]), _direct_p50(times, None, None))
    # The meal changes the forecast: the channels are not ignored.
    assert _stored_p50(forecasts[world.alice.pk]) != _stored_p50(forecasts[world.bob.pk])


def test_a_patient_who_logged_within_24_hours_is_read_as_logging_and_a_later_entry_counts_at_the_origin(
    world: World,
) -> None:
    now = timezone.now().replace(microsecond=0)
    times = _store_readings(world, now)
    # 20 h ago: outside the 6 h context, so it only says that alice logs her treatments.
    _log(world, kind="bolus", insulin_units=4, timestamp=(now - timedelta(hours=20)).isoformat())
    # After the newest reading but before now: already known at the origin.
    _log(world, kind="carbs", carbs_g=30, timestamp=(now - timedelta(seconds=20)).isoformat())
    [forecast] = services.patients_forecast(patient_ids=[world.alice.pk], now=now)

    carbs = np.zeros(READINGS)
    carbs[-1] = 30.0
    _assert_close(_stored_p50(forecast), _direct_p50(times, carbs, np.zeros(READINGS)))


def test_entries_older_than_24_hours_or_in_the_future_leave_a_patient_glucose_only(world: World) -> None:
    now = timezone.now().replace(microsecond=0)
    times = _store_readings(world, now)
    _log(world, kind="carbs", carbs_g=40, timestamp=(now - timedelta(hours=25)).isoformat())
    _log(world, kind="note", note="felt low", timestamp=(times[-1] - timedelta(minutes=30)).isoformat())
    _log(world, kind="carbs", carbs_g=40, timestamp=(now + timedelta(minutes=4)).isoformat())  # a planned meal
    [forecast] = services.patients_forecast(patient_ids=[world.alice.pk], now=now)
    _assert_close(_stored_p50(forecast), _direct_p50(times, None, None))


def test_logging_a_meal_queues_a_new_forecast(world: World) -> None:
    now = timezone.now().replace(microsecond=0)
    _store_readings(world, now)
    services.patients_forecast(patient_ids=[world.alice.pk], now=now)
    assert not PatientOutbox.objects.filter(patient_id=world.alice.pk).exists()
    with TestCase.captureOnCommitCallbacks(execute=False):
        _log(world, kind="carbs", carbs_g=45, timestamp=now.isoformat())
    assert PatientOutbox.objects.filter(patient_id=world.alice.pk).exists()
