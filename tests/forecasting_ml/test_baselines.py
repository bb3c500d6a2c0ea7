from __future__ import annotations

import math

import numpy as np

from forecasting.ml.baselines import AR2, LinearExtrapolation, Persistence, RidgeLagged, ar2_forecast


def test_ar2_matches_the_nightscout_recurrence_by_hand() -> None:
    prev, curr = 100.0, 110.0
    yp, yc = math.log(prev / 140), math.log(curr / 140)
    expected = []
    for _ in range(6):
        yn = -0.723 * yp + 1.716 * yc
        expected.append(140 * math.exp(yn))
        yp, yc = yc, yn
    got = ar2_forecast(np.array([prev]), np.array([curr]), 6)[0]
    assert np.allclose(got, expected)


def test_ar2_is_clamped_to_36_400() -> None:
    up = ar2_forecast(np.array([300.0]), np.array([390.0]), 12)[0]
    down = ar2_forecast(np.array([80.0]), np.array([45.0]), 12)[0]
    assert up.max() == 400.0
    assert down.min() == 36.0


def test_ar2_on_a_flat_trace_at_140_stays_flat() -> None:
    ctx = np.full((1, 12), 140.0)
    assert np.allclose(AR2().predict(ctx, 12), 140.0)


def test_persistence_and_linear_extrapolation() -> None:
    ctx = np.array([[np.nan, 100.0, 110.0, 120.0]])
    assert Persistence().predict(ctx, 3).tolist() == [[120.0, 120.0, 120.0]]
    assert np.allclose(LinearExtrapolation(window=3).predict(ctx, 2), [[130.0, 140.0]])


def test_ridge_learns_a_linear_trend() -> None:
    rng = np.random.default_rng(0)
    slope = rng.normal(0, 1, 500)
    level = rng.uniform(80, 250, 500)
    steps = np.arange(-11, 13)
    series = level[:, None] + slope[:, None] * steps[None, :] * 5
    ctx, fut = series[:, :12], series[:, 12:]
    model = RidgeLagged(lags=12, alpha=1e-3).fit(ctx, fut)
    pred = model.predict(ctx, 12)
    assert np.sqrt(np.mean((pred - np.clip(fut, 40, 400)) ** 2)) < 3.0
    again = RidgeLagged.from_dict(model.to_dict())
    assert np.allclose(again.predict(ctx, 12), pred)
