"""The worker's batched path grids a whole batch at once; it must equal forecasting each patient alone.

The reference below is the per-patient path written out with the public building blocks (one grid and
bank per patient, one forward pass per patient), so the batched code is checked against an independent
implementation, not against itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from forecasting.ml.data import SubjectReadings, batch_from_arrays, batch_from_subjects, readings_from_arrays
from forecasting.ml.datasets import MAX_STALENESS_MINUTES, WindowConfig, sufficient_history
from forecasting.ml.inference import (
    REASON_NO_READINGS,
    REASON_SPARSE,
    REASON_STALE,
    STATUS_INSUFFICIENT,
    STATUS_OK,
    Forecaster,
    PatientForecast,
)
from forecasting.ml.networks import build_network

from .conftest import synthetic_subject

START = 1_700_000_000


def alone(forecaster: Forecaster, p: SubjectReadings, now: int | None = None) -> tuple[str, str, int | None, np.ndarray | None, dict[str, float]]:
    """(status, reason, origin_time, quantiles [H, 3], risk) for one patient on its own grid."""
    if not len(p):
        return STATUS_INSUFFICIENT, REASON_NO_READINGS, None, None, {}
    last = int(p.times[-1])
    if now is not None and now - last > MAX_STALENESS_MINUTES * 60:
        return STATUS_INSUFFICIENT, REASON_STALE, last, None, {}
    bank, grids = forecaster.make_bank({"x": p})
    origin = np.array([bank.offsets["x"] + grids["x"].n_slots - 1])
    if not sufficient_history(bank.observed, origin)[0]:
        return STATUS_INSUFFICIENT, REASON_SPARSE, last, None, {}
    q = forecaster.predict_bank(bank, origin)
    return STATUS_OK, "", last, q[0], {k: float(v[0]) for k, v in forecaster.risk(q).items()}


def assert_same(forecaster: Forecaster, batch: list[SubjectReadings], now: int | None = None) -> list[PatientForecast]:
    together = forecaster.forecast_patients(batch, now=now)
    assert len(together) == len(batch)
    for got, p in zip(together, batch, strict=True):
        status, reason, origin, q, risk = alone(forecaster, p, now)
        assert (got.subject_id, got.status, got.reason, got.origin_time) == (p.subject_id, status, reason, origin)
        if q is None:
            assert got.points == [] and got.risk == {}
            continue
        assert [pt.minutes_ahead for pt in got.points] == list(range(5, 5 * (q.shape[0] + 1), 5))
        assert [pt.time for pt in got.points] == [origin + 60 * pt.minutes_ahead for pt in got.points]
        np.testing.assert_allclose([[pt.p10, pt.p50, pt.p90] for pt in got.points], q, rtol=1e-5)
        assert got.risk.keys() == risk.keys()
        np.testing.assert_allclose([got.risk[k] for k in risk], list(risk.values()), rtol=1e-5, atol=1e-7)
    return together


def _recent(subject: SubjectReadings, hours: float, end_shift: int = 0) -> SubjectReadings:
    keep = subject.times >= subject.times[-1] - int(hours * 3600)
    return readings_from_arrays(subject.times[keep] + end_shift, subject.glucose[keep], subject_id=subject.subject_id)


def _with_gaps_and_limits(seed: int) -> SubjectReadings:
    """6.5 h with a 10-minute gap (interpolated), a 25-minute gap (masked), jitter, Low and High words."""
    rng = np.random.default_rng(seed)
    t = START + 300 * np.arange(78) + rng.integers(-40, 40, 78)
    keep = np.ones(78, dtype=bool)
    keep[[30, 50, 51, 52, 53]] = False
    values: list[object] = list(np.round(120 + 60 * np.sin(np.arange(78) / 9 + seed)))
    values[10], values[11], values[60], values[70] = "Low", 35, "High", 455
    return readings_from_arrays(t[keep], [v for v, k in zip(values, keep, strict=True) if k], subject_id=f"gaps{seed}")


def test_a_batch_gives_exactly_what_each_patient_gets_alone() -> None:
    forecaster = Forecaster.load()
    full = [synthetic_subject(f"p{i}", days=1.0, seed=i) for i in range(5)]
    sparse = readings_from_arrays(np.array([0, 3600, 7200]) + START, [120, 130, 140], subject_id="sparse")
    empty = readings_from_arrays(np.zeros(0, dtype=np.int64), [], subject_id="empty")
    one = readings_from_arrays(np.array([START]), [99], subject_id="one")
    # Different clocks and lengths, one with an interleaved near-duplicate, one overlapping another in time,
    # one across midnight, gaps, Low/High readings, empty and too-sparse patients at both ends and between.
    batch = [
        empty,
        _recent(full[0], 6.5),
        _recent(full[1], 3.0, end_shift=-5 * 86400 + 17),
        sparse,
        empty,
        _with_gaps_and_limits(1),
        _recent(full[2], 12.0),
        one,
        _recent(full[3], 6.5, end_shift=-3600),
        _recent(full[3], 2.0, end_shift=86400 - (int(full[3].times[-1]) % 86400) + 1800),  # ends 00:30
        _with_gaps_and_limits(2),
        full[4],
        empty,
    ]
    dup = batch[1]
    batch[1] = readings_from_arrays(
        np.concatenate([dup.times, dup.times[-5:-4] + 20]), np.concatenate([dup.glucose, [300.0]]), subject_id="dup"
    )
    out = assert_same(forecaster, batch)
    assert [r.status for r in out].count(STATUS_OK) == 8
    assert {r.reason for r in out if r.status != STATUS_OK} == {REASON_NO_READINGS, REASON_SPARSE}


def test_a_patient_uploading_every_minute_is_forecast_from_the_newest_reading() -> None:
    forecaster = Forecaster.load()
    minute = readings_from_arrays(
        START + 60 * np.arange(400), 120 + 60 * np.sin(np.arange(400) / 40), subject_id="xdrip-1min"
    )
    on_grid = _recent(synthetic_subject("p", days=1.0, seed=3), 6.5)
    out = forecaster.forecast_patients([on_grid, minute, on_grid])
    assert [o.status for o in out] == [STATUS_OK] * 3
    assert out[1].origin_time == int(minute.times[-1])
    q, enough = forecaster.predict_readings(minute, np.array([len(minute) - 1]))
    assert enough[0]
    np.testing.assert_allclose([[pt.p10, pt.p50, pt.p90] for pt in out[1].points], q[0], rtol=1e-5)
    # The grid would have started from the slot's first reading, up to 4 minutes older: not the same forecast.
    stale = alone(forecaster, minute)[3]
    assert stale is not None and not np.allclose(stale, q[0])
    for got in (out[0], out[2]):
        np.testing.assert_allclose([[pt.p10, pt.p50, pt.p90] for pt in got.points], alone(forecaster, on_grid)[3], rtol=1e-5)
    sparse = readings_from_arrays(START + 60 * np.array([0, 1, 30, 61]), [100, 101, 110, 120], subject_id="sparse")
    assert forecaster.forecast_patients([sparse])[0].reason == REASON_SPARSE


def test_a_batch_where_everyone_is_forecast_some_with_short_history() -> None:
    # Every subject forecast (forecast_batch's no-scatter path), one with full context (no mask needed),
    # others with less than a context since their first reading (the mask path).
    forecaster = Forecaster.load()
    full = [synthetic_subject(f"p{i}", days=1.0, seed=i) for i in range(3)]
    out = assert_same(forecaster, [_recent(full[0], 6.5), _recent(full[1], 2.0, end_shift=-777), _recent(full[2], 1.0)])
    assert all(r.status == STATUS_OK for r in out)
    out = assert_same(forecaster, [_recent(full[0], 8.0), _recent(full[1], 6.5, end_shift=3 * 86400 + 11)])
    assert all(r.status == STATUS_OK for r in out)


def test_staleness_is_judged_per_patient_against_now() -> None:
    forecaster = Forecaster.load()
    fresh = _recent(synthetic_subject("fresh", days=0.5, seed=3), 6.5)
    now = int(fresh.times[-1]) + 60
    old = readings_from_arrays(fresh.times - 3600, fresh.glucose, subject_id="old")
    out = assert_same(forecaster, [old, fresh, old], now=now)
    assert [r.reason for r in out] == [REASON_STALE, "", REASON_STALE]


def test_a_single_patient_and_an_all_empty_batch() -> None:
    forecaster = Forecaster.load()
    assert_same(forecaster, [_with_gaps_and_limits(4)])
    empty = readings_from_arrays(np.zeros(0, dtype=np.int64), [], subject_id="e")
    assert_same(forecaster, [empty, empty])
    assert forecaster.forecast_patients([]) == []


@pytest.mark.parametrize("treated_first", [True, False])
def test_patients_with_and_without_treatments_share_a_batch(treated_first: bool) -> None:
    # The shipped model reads glucose only, so a small untrained treatment-aware network checks the
    # per-patient treatments-known channel and the carbohydrate/insulin columns.
    config = WindowConfig(use_treatments=True)
    base = Forecaster.load()
    hyper = {**base.metadata["hyperparameters"], "n_features": config.n_features}
    forecaster = Forecaster(build_network("patch_gru", hyper), config, base.scaler)
    plain = _recent(synthetic_subject("plain", days=0.5, seed=1), 6.5)
    treated = _recent(synthetic_subject("treated", days=0.5, seed=2), 6.5)
    rng = np.random.default_rng(0)
    treated.carbs = np.where(rng.random(len(treated)) < 0.05, 40.0, 0.0)
    treated.insulin = np.where(rng.random(len(treated)) < 0.05, 3.0, 0.0)
    batch = [treated, plain, treated] if treated_first else [plain, treated, plain]
    out = assert_same(forecaster, batch)
    assert all(r.status == STATUS_OK for r in out)
    # The channels matter to this network, so equality above is not vacuous.
    assert out[0].points[0].p50 != out[1].points[0].p50


@pytest.mark.parametrize("parts", [
    # unsorted, duplicate times, words, junk, an empty subject: the sorting path
    [(np.array([600, 0, 300, 300, 900]) + START, [110, 100, "Low", 130, "junk"]),
     (np.zeros(0, dtype=np.int64), []),
     (np.array([5, 1, 3]) + START, ["High", 500, 20])],
    # already in order per subject (the database's case), the next subject starting earlier: no sort needed
    [(np.array([0, 300, 300, 600]) + START, [100.0, 20.0, 130.0, 500.0]),
     (np.array([-900, -600]) + START, [90.0, 95.0]),
     (np.zeros(0, dtype=np.int64), [])],
])
def test_batch_from_arrays_equals_readings_from_arrays_per_patient(parts: list[tuple[np.ndarray, list[object]]]) -> None:
    ids = [f"s{i}" for i in range(len(parts))]
    values = [v for _, vs in parts for v in vs]
    batch = batch_from_arrays(np.concatenate([t for t, _ in parts]), values if any(isinstance(v, str) for v in values)
                              else np.array(values), [len(t) for t, _ in parts], ids)
    expected = batch_from_subjects([readings_from_arrays(t, v, subject_id=s) for (t, v), s in zip(parts, ids, strict=True)])
    assert batch.subject_ids == expected.subject_ids
    for field in ("offsets", "times", "glucose", "flags", "carbs", "insulin", "has_treatments"):
        np.testing.assert_array_equal(getattr(batch, field), getattr(expected, field), err_msg=field)


def test_batch_from_arrays_rejects_inconsistent_lengths() -> None:
    with pytest.raises(ValueError, match="lengths"):
        batch_from_arrays(np.array([START]), [100], [1, 1], ["a"])
    with pytest.raises(ValueError, match="lengths sum"):
        batch_from_arrays(np.array([START]), [100], [2], ["a"])
