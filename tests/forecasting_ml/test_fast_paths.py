"""The speed-minded formulations of gridding, features, decoding and risk against plain references.

Each reference below is the straightforward formulation (what the code computed before it was tuned for
the worker's batches), so the tuned code is checked against an independent implementation.
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
from scipy.special import expit, logit

from forecasting.ml.data import (
    FLAG_HIGH,
    FLAG_LOW,
    GRID_MINUTES,
    GRID_SECONDS,
    MAX_EMPTY_SLOTS,
    MAX_INTERPOLATED_GAP_MINUTES,
    SEGMENT_BREAK_MINUTES,
    SUBJECT_GAP_SLOTS,
    SubjectReadings,
    build_grid,
    parse_glucose,
)
from forecasting.ml.datasets import MIN_READINGS_LAST_HOUR, Scaler, WindowConfig, slot_features, sufficient_history
from forecasting.ml.inference import Forecaster
from forecasting.ml.risk import (
    RISK_EVENTS,
    LogisticCalibrator,
    calibrate_events,
    event_probabilities,
    raw_event_probabilities,
    step_cdf,
)

START = 1_700_000_000


def reference_grid(times: np.ndarray, glucose: np.ndarray, carbs: np.ndarray | None,
                   subject_starts: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """build_grid's fields, computed the plain way (segment ids per reading, scatter + running max)."""
    dt = np.diff(times)
    new_segment = np.concatenate([[True], dt > SEGMENT_BREAK_MINUTES * 60])
    seg_id = np.cumsum(new_segment) - 1
    seg_start = np.flatnonzero(new_segment)
    local = np.rint((times - times[seg_start][seg_id]) / GRID_SECONDS).astype(np.int64)
    seg_offset = np.zeros(seg_start.shape[0], dtype=np.int64)
    if seg_start.shape[0] > 1:
        gap_slots = np.minimum(np.rint((times[seg_start[1:]] - times[seg_start[1:] - 1]) / GRID_SECONDS).astype(np.int64),
                               MAX_EMPTY_SLOTS)
        if subject_starts is not None:
            gap_slots[np.isin(seg_start[1:], subject_starts)] = SUBJECT_GAP_SLOTS
        seg_offset[1:] = np.cumsum(local[seg_start[1:] - 1] + gap_slots)
    slot = np.maximum.accumulate(seg_offset[seg_id] + local)
    kept = np.concatenate([[True], np.diff(slot) > 0])
    n_slots = int(slot[-1]) + 1
    value = np.full(n_slots, np.nan)
    observed = np.zeros(n_slots, dtype=bool)
    value[slot[kept]] = glucose[kept]
    observed[slot[kept]] = True
    slot_seg = np.zeros(n_slots, dtype=np.int64)
    slot_seg[slot[kept]] = seg_id[kept]
    slot_seg = np.maximum.accumulate(slot_seg)
    slot_time = times[seg_start][slot_seg] + (np.arange(n_slots) - seg_offset[slot_seg]) * GRID_SECONDS
    interpolated = np.zeros(n_slots, dtype=bool)
    ks = slot[kept]
    for a, b in pairwise(ks.tolist()):
        g = b - a
        if 1 < g <= MAX_INTERPOLATED_GAP_MINUTES // GRID_MINUTES:
            value[a + 1 : b] = value[a] + (value[b] - value[a]) * (np.arange(1, g) / g)
            interpolated[a + 1 : b] = True
    return {"reading_slot": slot, "reading_kept": kept, "value": value, "observed": observed,
            "interpolated": interpolated, "slot_time": slot_time,
            "carbs": np.zeros(n_slots) if carbs is None else np.bincount(slot, carbs, n_slots)}


def messy_times(rng: np.random.Generator, n: int) -> np.ndarray:
    """Sorted times with 1-minute uploads, jitter, near-duplicates, short, long and very long gaps."""
    step = rng.choice([60, 300, 300, 300, 299, 301, 900, 0, 20, 600, 1900, 3 * 3600, 3 * 86400], size=n)
    return START + np.cumsum(step + rng.integers(-30, 30, n) * (step > 100))


@pytest.mark.parametrize("seed", range(8))
def test_build_grid_equals_the_plain_formulation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    times = messy_times(rng, n)
    glucose = rng.uniform(40, 400, n)
    carbs = np.where(rng.random(n) < 0.1, 30.0, 0.0) if seed % 2 else None
    starts = np.sort(rng.choice(np.arange(1, n), size=min(3, n - 1), replace=False)) if n > 1 and seed % 3 == 0 else None
    if starts is not None:
        # A subject start must start a segment (what _batch_grid guarantees): put a day before each.
        times = times + np.searchsorted(starts, np.arange(n), side="right") * 2 * 86400
    grid = build_grid(SubjectReadings("s", times, glucose, np.zeros(n, np.int8), carbs=carbs), subject_starts=starts)
    for name, expected in reference_grid(times, glucose, carbs, starts).items():
        np.testing.assert_array_equal(getattr(grid, name), expected, err_msg=name)


@pytest.mark.parametrize("jitter", [0, 40])
def test_build_grid_of_one_segment_equals_the_plain_formulation(jitter: int) -> None:
    # A lone patient's last hours: one segment (the single-anchor path), near-duplicates, short gaps.
    rng = np.random.default_rng(jitter)
    times = START + 300 * np.arange(78) + rng.integers(-jitter, jitter + 1, 78)
    times = np.sort(np.concatenate([np.delete(times, [20, 40, 41, 60, 61, 62]), times[[10]] + 30]))
    glucose = rng.uniform(40, 400, times.shape[0])
    grid = build_grid(SubjectReadings("s", times, glucose, np.zeros(times.shape[0], np.int8)))
    assert grid.interpolated.any()
    for name, expected in reference_grid(times, glucose, None).items():
        np.testing.assert_array_equal(getattr(grid, name), expected, err_msg=name)


def test_build_grid_keeps_guarding_out_of_order_times() -> None:
    times = START + np.array([0, 300, 240, 600, 900, 5000, 4900, 5200])
    glucose = np.arange(100.0, 108.0)
    grid = build_grid(SubjectReadings("s", times, glucose, np.zeros(8, np.int8)))
    for name, expected in reference_grid(times, glucose, None).items():
        np.testing.assert_array_equal(getattr(grid, name), expected, err_msg=name)


def test_time_of_day_channels_match_the_formula() -> None:
    rng = np.random.default_rng(0)
    slot_time = np.concatenate([rng.integers(-10**9, 2 * 10**9, 5000), np.arange(0, 86400, 7)])
    x = slot_features(np.full(slot_time.shape, 120.0), np.ones(slot_time.shape, bool), slot_time,
                      None, None, None, Scaler(), use_treatments=False)
    angle = np.array([2 * math.pi * ((t % 86400) / 86400.0) for t in slot_time.tolist()])
    np.testing.assert_allclose(x[:, 3], np.sin(angle).astype(np.float32), rtol=0, atol=1e-7)
    np.testing.assert_allclose(x[:, 4], np.cos(angle).astype(np.float32), rtol=0, atol=1e-7)


def test_treatment_channels_left_zero_equal_zero_arrays() -> None:
    rng = np.random.default_rng(1)
    value = np.where(rng.random((4, 72)) < 0.1, np.nan, rng.uniform(40, 400, (4, 72)))
    observed, slot_time = ~np.isnan(value), START + 300 * np.arange(4 * 72).reshape(4, 72)
    zeros = np.zeros(value.shape)
    with_zeros = slot_features(value, observed, slot_time, zeros, zeros, zeros.astype(bool), Scaler(), True)
    left_zero = slot_features(value, observed, slot_time, None, None, None, Scaler(), True)
    np.testing.assert_array_equal(left_zero, with_zeros)
    with pytest.raises(ValueError, match="use_treatments needs"):
        slot_features(value, observed, slot_time, zeros, None, None, Scaler(), True)


@pytest.mark.parametrize("log_target", [True, False])
def test_decode_target_in_place_equals_the_plain_one(log_target: bool) -> None:
    config, scaler = WindowConfig(log_target=log_target), Scaler()
    rng = np.random.default_rng(2)
    z, last = rng.normal(size=(7, 24, 3)), rng.uniform(40, 400, 7)
    expected = config.decode_target(z, last, scaler)
    np.testing.assert_array_equal(config.decode_target(z.copy(), last, scaler, out=np.empty_like(z)), expected)
    np.testing.assert_array_equal(config.decode_target(z, last, scaler, out=z), expected)


def random_quantiles(rng: np.random.Generator, b: int) -> np.ndarray:
    q = np.sort(rng.uniform(30, 420, (b, 24, 3)), axis=2)
    q[: b // 4, :, 0] = q[: b // 4, :, 1]  # zero spread below: the 0.5 mg/dL floor
    q[: b // 8, :, 1] = 70.0  # the median on a threshold
    return q


def test_event_probabilities_equal_the_per_step_maximum() -> None:
    q = random_quantiles(np.random.default_rng(3), 400)
    raw = raw_event_probabilities(q[..., 0], q[..., 1], q[..., 2])
    assert list(raw) == [ev.name for ev in RISK_EVENTS]
    for ev in RISK_EVENTS:
        n = ev.minutes // 5
        cdf = step_cdf(ev.threshold, q[:, :n, 0], q[:, :n, 1], q[:, :n, 2])
        np.testing.assert_allclose(raw[ev.name], (cdf if ev.below else 1.0 - cdf).max(axis=1), rtol=1e-12, atol=1e-15)


def test_calibrated_event_probabilities_equal_calibrating_the_raw_ones() -> None:
    q = random_quantiles(np.random.default_rng(4), 300)
    raw = raw_event_probabilities(q[..., 0], q[..., 1], q[..., 2])
    for calibrators in ({}, {RISK_EVENTS[1].name: LogisticCalibrator(0.8, -0.3)},
                        {ev.name: LogisticCalibrator(1.0 + k / 10, k / 5) for k, ev in enumerate(RISK_EVENTS)}):
        got = event_probabilities(q[..., 0], q[..., 1], q[..., 2], calibrators)
        expected = calibrate_events(raw, calibrators)
        assert list(got) == list(expected)
        for name, values in expected.items():
            np.testing.assert_allclose(got[name], values, rtol=1e-12, atol=1e-15, err_msg=name)
            if name in calibrators:
                c = calibrators[name]
                np.testing.assert_allclose(values, expit(c.a_ * logit(np.clip(raw[name], 1e-5, 1 - 1e-5)) + c.b_))


def test_forecaster_risk_uses_its_calibration() -> None:
    forecaster = Forecaster.load()
    q = random_quantiles(np.random.default_rng(5), 50)
    expected = calibrate_events(raw_event_probabilities(q[..., 0], q[..., 1], q[..., 2]), forecaster.calibrators)
    for name, values in forecaster.risk(q).items():
        np.testing.assert_allclose(values, expected[name], rtol=1e-12, atol=1e-15)


def test_parse_glucose_numbers_equal_the_plain_selection() -> None:
    values = np.array([12.0, 39.9, 40.0, 41.5, 120.0, 400.0, 400.1, 612.0, np.nan, -5.0])
    glucose, flags = parse_glucose(values)
    below, above = values < 40.0, values > 400.0
    np.testing.assert_array_equal(glucose, np.where(below, 40.0, np.where(above, 400.0, values)))
    np.testing.assert_array_equal(flags, np.where(below, FLAG_LOW, np.where(above, FLAG_HIGH, 0)).astype(np.int8))
    words, word_flags = parse_glucose(["Low", "hi", "junk", *values.tolist()])
    np.testing.assert_array_equal(words[3:], glucose)
    np.testing.assert_array_equal(word_flags, np.concatenate([[FLAG_LOW, FLAG_HIGH, 0], flags]))
    assert words[0] == 40.0 and words[1] == 400.0 and np.isnan(words[2])


@pytest.mark.parametrize("seed", range(4))
def test_sufficient_history_windowed_count_equals_the_running_sum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    observed = rng.random(3000) < rng.uniform(0.1, 0.9)
    slots = np.concatenate([np.arange(14), rng.integers(0, 3000, 100)])  # some near the grid's start
    csum = np.concatenate([[0], np.cumsum(observed)])
    expected = observed[slots] & (csum[slots + 1] - csum[np.maximum(slots - 11, 0)] >= MIN_READINGS_LAST_HOUR)
    np.testing.assert_array_equal(sufficient_history(observed, slots), expected)  # few origins: windowed
    np.testing.assert_array_equal(sufficient_history(observed[:600], slots[slots < 600]), expected[slots < 600])
