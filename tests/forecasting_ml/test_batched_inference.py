"""The worker's batched path grids a whole batch at once; it must equal forecasting each patient alone."""

from __future__ import annotations

import numpy as np

from forecasting.ml.data import SubjectReadings, readings_from_arrays
from forecasting.ml.inference import STATUS_INSUFFICIENT, STATUS_OK, Forecaster

from .conftest import synthetic_subject


def _recent(subject: SubjectReadings, hours: float, end_shift: int = 0) -> SubjectReadings:
    keep = subject.times >= subject.times[-1] - int(hours * 3600)
    return readings_from_arrays(subject.times[keep] + end_shift, subject.glucose[keep], subject_id=subject.subject_id)


def test_a_batch_gives_exactly_what_each_patient_gets_alone() -> None:
    forecaster = Forecaster.load()
    full = [synthetic_subject(f"p{i}", days=1.0, seed=i) for i in range(5)]
    sparse = readings_from_arrays(np.array([0, 3600, 7200]) + 1_700_000_000, [120, 130, 140], subject_id="sparse")
    empty = readings_from_arrays(np.zeros(0, dtype=np.int64), [], subject_id="empty")
    # Different clocks and lengths, one with an interleaved near-duplicate, one overlapping another in time.
    batch = [
        _recent(full[0], 6.5),
        _recent(full[1], 3.0, end_shift=-5 * 86400 + 17),
        sparse,
        empty,
        _recent(full[2], 12.0),
        _recent(full[3], 6.5, end_shift=-3600),
        full[4],
    ]
    dup = batch[0]
    batch[0] = readings_from_arrays(
        np.concatenate([dup.times, dup.times[-5:-4] + 20]), np.concatenate([dup.glucose, [300.0]]), subject_id="dup"
    )
    together = forecaster.forecast_patients(batch)
    alone = [forecaster.forecast_patients([p])[0] for p in batch]
    assert [r.status for r in together] == [r.status for r in alone]
    assert [r.status for r in together].count(STATUS_OK) == 5
    assert together[2].status == together[3].status == STATUS_INSUFFICIENT
    for a, b in zip(together, alone, strict=True):
        assert a.reason == b.reason and a.origin_time == b.origin_time
        assert [(p.minutes_ahead, p.time) for p in a.points] == [(p.minutes_ahead, p.time) for p in b.points]
        np.testing.assert_allclose([[p.p10, p.p50, p.p90] for p in a.points], [[p.p10, p.p50, p.p90] for p in b.points],
                                   rtol=1e-5)
        assert a.risk.keys() == b.risk.keys()
        np.testing.assert_allclose(list(a.risk.values()), list(b.risk.values()), rtol=1e-5, atol=1e-7)


def test_a_batch_mixing_patients_with_and_without_treatments_still_forecasts_each() -> None:
    forecaster = Forecaster.load()
    plain = synthetic_subject("plain", days=0.5, seed=1)
    treated = synthetic_subject("treated", days=0.5, seed=2)
    treated.carbs = np.zeros(len(treated))
    treated.insulin = np.zeros(len(treated))
    out = forecaster.forecast_patients([plain, treated])
    assert [r.status for r in out] == [STATUS_OK, STATUS_OK]
    assert abs(out[0].points[0].p50 - forecaster.forecast_patients([plain])[0].points[0].p50) < 1e-3
