"""Baseline forecasters: persistence, linear extrapolation, Nightscout AR2, ridge.

All take a context of glucose values on the 5-minute grid, ``[B, L]`` mg/dL with
NaN where unknown and the last column being the origin's real reading, and
return ``[B, H]`` mg/dL forecasts for steps 1..H (5 min each).
"""

from __future__ import annotations

from typing import Any

import numpy as np

AR2_COEF_PREV = -0.723
AR2_COEF_CURR = 1.716
AR2_CENTER = 140.0
AR2_MIN = 36.0
AR2_MAX = 400.0


def ar2_forecast(prev: np.ndarray, curr: np.ndarray, steps: int) -> np.ndarray:
    """Nightscout AR2, exactly as in cgm-remote-monitor (GUIDE section 6).

    In y = ln(BG/140): y_next = -0.723 * y_prev + 1.716 * y_curr, stepping 5 min
    at a time; BG = 140 * e^y clamped to 36..400.

    Args:
        prev: ``[B]`` reading at t-5 min.
        curr: ``[B]`` reading at t.
        steps: number of 5-minute steps.
    Returns:
        ``[B, steps]`` mg/dL.
    """
    y_prev = np.log(np.asarray(prev, dtype=np.float64) / AR2_CENTER)
    y_curr = np.log(np.asarray(curr, dtype=np.float64) / AR2_CENTER)
    out = np.empty((y_curr.shape[0], steps))
    for k in range(steps):
        y_next = AR2_COEF_PREV * y_prev + AR2_COEF_CURR * y_curr
        out[:, k] = y_next
        y_prev, y_curr = y_curr, y_next
    return np.clip(AR2_CENTER * np.exp(out), AR2_MIN, AR2_MAX)


def _last_and_prev(context: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    last = context[:, -1]
    prev = context[:, -2]
    # Without a t-5 value AR2 degenerates to persistence (prev = curr).
    prev = np.where(np.isnan(prev), last, prev)
    return last, prev


class Persistence:
    """Forecast = last reading, for every horizon."""

    name = "persistence"

    def fit(self, contexts: np.ndarray, futures: np.ndarray) -> Persistence:
        return self

    def predict(self, context: np.ndarray, horizon_steps: int) -> np.ndarray:
        return np.repeat(context[:, -1:], horizon_steps, axis=1)


class LinearExtrapolation:
    """Least-squares line through the real values of the last ``window`` slots."""

    name = "linear"

    def __init__(self, window: int = 3, max_slope: float = 5.0) -> None:
        self.window = window
        # mg/dL per minute; physiological rates rarely exceed 3-4.
        self.max_slope = max_slope

    def fit(self, contexts: np.ndarray, futures: np.ndarray) -> LinearExtrapolation:
        return self

    def predict(self, context: np.ndarray, horizon_steps: int) -> np.ndarray:
        w = context[:, -self.window :]
        t = np.arange(-w.shape[1] + 1, 1, dtype=np.float64)[None, :] * 5.0
        ok = ~np.isnan(w)
        n = ok.sum(axis=1)
        tm = np.where(ok, t, 0).sum(axis=1) / np.maximum(n, 1)
        ym = np.where(ok, w, 0).sum(axis=1) / np.maximum(n, 1)
        dt = np.where(ok, t - tm[:, None], 0)
        dy = np.where(ok, w - ym[:, None], 0)
        denom = (dt * dt).sum(axis=1)
        slope = np.where(denom > 0, (dt * dy).sum(axis=1) / np.where(denom > 0, denom, 1), 0.0)
        slope = np.clip(slope, -self.max_slope, self.max_slope)
        steps = np.arange(1, horizon_steps + 1)[None, :] * 5.0
        return np.clip(context[:, -1:] + slope[:, None] * steps, 40.0, 400.0)


class AR2:
    """Nightscout AR2 on the grid context (t-5 from the previous slot)."""

    name = "ar2"

    def fit(self, contexts: np.ndarray, futures: np.ndarray) -> AR2:
        return self

    def predict(self, context: np.ndarray, horizon_steps: int) -> np.ndarray:
        last, prev = _last_and_prev(context)
        return ar2_forecast(prev, last, horizon_steps)


class RidgeLagged:
    """Ridge regression of future deltas on lagged deltas (closed form, numpy).

    Features: the last ``lags`` values minus the origin value (missing -> 0)
    plus their availability mask and an intercept. Targets: deltas for every
    horizon step; missing targets are dropped per step.

    Attributes:
        coef_: ``[D, H]`` weights after :meth:`fit`.
    """

    name = "ridge"

    def __init__(self, lags: int = 12, alpha: float = 1.0) -> None:
        self.lags = lags
        self.alpha = alpha
        self.coef_: np.ndarray | None = None

    def _design(self, context: np.ndarray) -> np.ndarray:
        w = context[:, -self.lags :]
        last = context[:, -1:]
        ok = ~np.isnan(w)
        rel = np.where(ok, w - last, 0.0) / 50.0
        level = (last - 150.0) / 60.0
        return np.concatenate([rel, ok.astype(np.float64), level, np.ones_like(last)], axis=1)

    def fit(self, contexts: np.ndarray, futures: np.ndarray) -> RidgeLagged:
        """Args: contexts ``[N, L]`` mg/dL, futures ``[N, H]`` mg/dL (NaN = missing)."""
        X = self._design(contexts)
        d = X.shape[1]
        H = futures.shape[1]
        self.coef_ = np.zeros((d, H))
        for h in range(H):
            ok = ~np.isnan(futures[:, h])
            Xh = X[ok]
            yh = (futures[ok, h] - contexts[ok, -1]) / 50.0
            A = Xh.T @ Xh + self.alpha * np.eye(d)
            self.coef_[:, h] = np.linalg.solve(A, Xh.T @ yh)
        return self

    def predict(self, context: np.ndarray, horizon_steps: int) -> np.ndarray:
        if self.coef_ is None:
            raise RuntimeError("RidgeLagged.predict called before fit")
        delta = self._design(context) @ self.coef_[:, :horizon_steps] * 50.0
        return np.clip(context[:, -1:] + delta, 40.0, 400.0)

    def to_dict(self) -> dict[str, object]:
        return {
            "lags": self.lags,
            "alpha": self.alpha,
            "coef": None if self.coef_ is None else self.coef_.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RidgeLagged:
        model = cls(lags=int(d["lags"]), alpha=float(d["alpha"]))
        if d.get("coef") is not None:
            model.coef_ = np.asarray(d["coef"], dtype=np.float64)
        return model
