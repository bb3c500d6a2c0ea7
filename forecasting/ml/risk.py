"""Near-term risk probabilities derived from the quantile forecast, and calibration.

Each step's p10/p50/p90 define a two-piece normal (different spread below and
above the median), which reproduces the three quantiles exactly. The chance of
an event "within T minutes" is taken as the largest per-step probability up to
T: forecast errors are strongly correlated from step to step, so the maximum is
a better approximation than assuming independence. A two-parameter logistic
recalibration, fitted on validation subjects, corrects what remains; the
calibration report (Brier score and reliability table) shows how well it works.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy.special import expit, logit, ndtr

Z90 = 1.2815515655446004  # standard normal quantile at 0.9


@dataclass(frozen=True)
class RiskEvent:
    """An event: glucose below (or above) ``threshold`` within ``minutes``."""

    name: str
    threshold: float
    minutes: int
    below: bool


RISK_EVENTS: tuple[RiskEvent, ...] = (
    RiskEvent("p_below_70_30min", 70.0, 30, True),
    RiskEvent("p_below_54_30min", 54.0, 30, True),
    RiskEvent("p_below_70_60min", 70.0, 60, True),
    RiskEvent("p_below_54_60min", 54.0, 60, True),
    RiskEvent("p_above_250_60min", 250.0, 60, False),
)


def step_cdf(threshold: float, p10: np.ndarray, p50: np.ndarray, p90: np.ndarray) -> np.ndarray:
    """P(glucose < threshold) per step under the two-piece normal.

    Args:
        p10, p50, p90: ``[..., H]`` mg/dL.
    Returns:
        ``[..., H]`` probabilities.
    """
    sd_lo = np.maximum((p50 - p10) / Z90, 0.5)
    sd_hi = np.maximum((p90 - p50) / Z90, 0.5)
    sd = np.where(threshold < p50, sd_lo, sd_hi)
    return ndtr((threshold - p50) / sd)


@cache
def _event_plan(step_minutes: int) -> tuple[int, np.ndarray, tuple[tuple[int, int, bool], ...], np.ndarray]:
    """What :func:`_raw_event_matrix` needs of RISK_EVENTS, worked out once per step length.

    Returns:
        (steps read, thresholds ``[T, 1, 1]``, per event (threshold row, steps, below), rows of "above" events)
    """
    thresholds = sorted({ev.threshold for ev in RISK_EVENTS})
    events = tuple((thresholds.index(ev.threshold), ev.minutes // step_minutes, ev.below) for ev in RISK_EVENTS)
    above = np.array([k for k, ev in enumerate(RISK_EVENTS) if not ev.below], dtype=np.int64)
    return max(m for _, m, _ in events), np.array(thresholds)[:, None, None], events, above


def _raw_event_matrix(p10: np.ndarray, p50: np.ndarray, p90: np.ndarray, step_minutes: int) -> np.ndarray:
    """``[E, B]`` uncalibrated probabilities, rows in RISK_EVENTS order.

    Why this shape: the spreads are computed once for all thresholds, and since ndtr is monotone the
    largest per-step probability is ndtr of the most extreme standardised distance (the largest for
    "below" events, 1 - ndtr of the smallest for "above"), so ndtr runs once per event and subject
    instead of once per step and threshold.
    """
    n, t, events, above = _event_plan(step_minutes)
    # Steps first ([n, B], contiguous): the reductions over steps below then run along whole rows, which
    # numpy vectorises, instead of along a short strided last axis (the quantiles arrive as [B, H, 3]).
    p10 = np.ascontiguousarray(p10[:, :n].T)
    p50 = np.ascontiguousarray(p50[:, :n].T)
    p90 = np.ascontiguousarray(p90[:, :n].T)
    sd_lo = np.maximum((p50 - p10) / Z90, 0.5)
    sd_hi = np.maximum((p90 - p50) / Z90, 0.5)
    z = (t - p50) / np.where(t < p50, sd_lo, sd_hi)  # [thresholds, n, B]: step_cdf's argument
    out = np.empty((len(events), p50.shape[1]))
    for k, (row, m, below) in enumerate(events):
        # The step with the largest ndtr(z) (below) or 1 - ndtr(z) (above): the matching extreme of z.
        (np.maximum if below else np.minimum).reduce(z[row, :m], axis=0, out=out[k])
    ndtr(out, out=out)
    out[above] = 1.0 - out[above]
    return out


def raw_event_probabilities(
    p10: np.ndarray, p50: np.ndarray, p90: np.ndarray, step_minutes: int = 5
) -> dict[str, np.ndarray]:
    """Uncalibrated event probabilities.

    Args:
        p10, p50, p90: ``[B, H]`` mg/dL for steps 1..H.
    Returns:
        event name -> ``[B]`` probability.
    """
    raw = _raw_event_matrix(p10, p50, p90, step_minutes)
    return {ev.name: row for ev, row in zip(RISK_EVENTS, raw, strict=True)}


def _logit(p: np.ndarray) -> np.ndarray:
    return logit(np.clip(p, 1e-5, 1 - 1e-5))


def calibrate_events(raw: dict[str, np.ndarray], calibrators: dict[str, LogisticCalibrator]) -> dict[str, np.ndarray]:
    """Each event's calibrator applied to its ``[B]`` raw probabilities (identity where there is none).

    The events are stacked and calibrated in one pass: per batch that is a handful of numpy calls
    instead of a handful per event, which matters when the worker forecasts one patient.
    """
    names = [name for name in raw if name in calibrators]
    out = dict(raw)
    if names:
        slopes = np.array([[calibrators[name].a_] for name in names])
        intercepts = np.array([[calibrators[name].b_] for name in names])
        calibrated = expit(slopes * _logit(np.stack([raw[name] for name in names])) + intercepts)
        for name, values in zip(names, calibrated, strict=True):
            out[name] = values
    return out


def event_probabilities(
    p10: np.ndarray, p50: np.ndarray, p90: np.ndarray, calibrators: dict[str, LogisticCalibrator], step_minutes: int = 5
) -> dict[str, np.ndarray]:
    """Calibrated event probabilities: ``calibrate_events(raw_event_probabilities(...), calibrators)``."""
    return calibrate_events(raw_event_probabilities(p10, p50, p90, step_minutes), calibrators)


class LogisticCalibrator:
    """p_cal = sigmoid(a * logit(p_raw) + b), fitted by Newton's method; :func:`calibrate_events` applies it.

    Attributes:
        a_, b_: fitted slope and intercept.
    """

    def __init__(self, a: float = 1.0, b: float = 0.0) -> None:
        self.a_ = a
        self.b_ = b

    def fit(self, p_raw: np.ndarray, outcome: np.ndarray, iterations: int = 50) -> LogisticCalibrator:
        x = _logit(p_raw)
        y = outcome.astype(np.float64)
        X = np.stack([x, np.ones_like(x)], axis=1)
        w = np.array([1.0, 0.0])
        for _ in range(iterations):
            p = expit(X @ w)
            grad = X.T @ (p - y)
            hess = (X * (p * (1 - p))[:, None]).T @ X + 1e-6 * np.eye(2)
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.abs(step).max() < 1e-8:
                break
        self.a_, self.b_ = float(w[0]), float(w[1])
        return self

    def to_dict(self) -> dict[str, float]:
        return {"a": self.a_, "b": self.b_}


def event_outcomes(future: np.ndarray, step_minutes: int = 5) -> dict[str, np.ndarray]:
    """What really happened after each origin.

    Args:
        future: ``[B, H]`` real readings (NaN where missing) for steps 1..H.
    Returns:
        event name -> (outcome ``[B]`` bool, known ``[B]`` bool) packed as a
        ``[2, B]`` array: an event counts as known when it happened or when at
        least half of the window's readings exist.
    """
    out: dict[str, np.ndarray] = {}
    for ev in RISK_EVENTS:
        n = ev.minutes // step_minutes
        f = future[:, :n]
        with np.errstate(invalid="ignore"):
            hit = (f < ev.threshold) if ev.below else (f > ev.threshold)
        happened = np.nan_to_num(hit.astype(np.float64) * ~np.isnan(f)).any(axis=1)
        known = happened | ((~np.isnan(f)).sum(axis=1) >= n // 2)
        out[ev.name] = np.stack([happened, known])
    return out


def brier_score(p: np.ndarray, outcome: np.ndarray) -> float:
    return float(np.mean((p - outcome.astype(np.float64)) ** 2)) if p.size else float("nan")


def reliability_table(p: np.ndarray, outcome: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Rows of (bin range, count, mean predicted, observed frequency)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        rows.append(
            {
                "bin_low": float(edges[b]),
                "bin_high": float(edges[b + 1]),
                "count": n,
                "mean_predicted": float(p[sel].mean()) if n else float("nan"),
                "observed_frequency": float(outcome[sel].mean()) if n else float("nan"),
            }
        )
    return rows


def calibration_report(
    probs: dict[str, np.ndarray], outcomes: dict[str, np.ndarray], bins: int = 10
) -> dict[str, dict[str, object]]:
    """Brier score, base rate and reliability table per event (known outcomes only)."""
    report: dict[str, dict[str, object]] = {}
    for name, p in probs.items():
        happened, known = outcomes[name]
        pk, yk = p[known], happened[known]
        base = float(yk.mean()) if yk.size else float("nan")
        report[name] = {
            "n": int(yk.size),
            "base_rate": base,
            "brier": brier_score(pk, yk),
            # Brier of always predicting the base rate: the skill reference.
            "brier_climatology": brier_score(np.full(yk.shape, base), yk) if yk.size else float("nan"),
            "reliability": reliability_table(pk, yk, bins),
        }
    return report
