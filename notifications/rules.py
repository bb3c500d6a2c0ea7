"""Alert rules as pure functions: recent readings and risk in, the alert conditions active now out.

No database here, so every rule is tested on plain lists. Episodes, dedupe, cooldowns, quiet
hours and escalation are applied by services.py on top of these conditions.

Thresholds (docs/notifications.md has the table):
- urgent low <55 mg/dL: level 2 hypoglycaemia is <54 (Battelino et al., Diabetes Care 2019);
  55 is the fixed "urgent low" alarm of Dexcom G6/G7 and Nightscout's default BG_LOW (55).
- low: the patient's threshold (default 70, level 1 hypoglycaemia, same source), within care-team bounds.
- predicted low: P(<70 within 30 min) from the forecaster ≥ the patient's probability threshold.
- high: every reading of the last 30 min above the patient's high threshold (default 250, the
  consensus "very high" level 2 band, Battelino 2019). Configurable.
- rising fast: ≥3 mg/dL/min over 15 min (the faster of the two Dexcom rise-rate alert settings). Configurable.
- stale sensor: no reading for 30 min while the app is active. Configurable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings

URGENT_LOW_MGDL = 55.0
SENSOR_LOW_MGDL = 39.0  # a "Low" reading: below the sensor's range (about 40 mg/dL)
SENSOR_HIGH_MGDL = 401.0
# Readings older than this cannot open a glucose episode: the alert would describe the past.
RECENT = timedelta(minutes=15)


def _setting(name: str, default: float) -> float:
    return float(getattr(settings, name, default))


@dataclass(frozen=True, slots=True)
class Reading:
    at: datetime
    mgdl: float  # sensor Low/High mapped to 39/401, so comparisons stay simple


@dataclass(frozen=True, slots=True)
class Thresholds:
    low_mgdl: float = 70.0
    high_mgdl: float = 250.0
    predicted_low_probability: float = 0.5
    high_sustained: timedelta = timedelta(minutes=30)
    rise_mgdl_per_min: float = 3.0
    rise_window: timedelta = timedelta(minutes=15)
    stale_after: timedelta = timedelta(minutes=30)


def thresholds_from_settings(*, low_mgdl: float, high_mgdl: float, predicted_low_probability: float) -> Thresholds:
    return Thresholds(
        low_mgdl=low_mgdl, high_mgdl=high_mgdl, predicted_low_probability=predicted_low_probability,
        high_sustained=timedelta(minutes=_setting("ALERT_HIGH_SUSTAINED_MINUTES", 30)),
        rise_mgdl_per_min=_setting("ALERT_RISE_MGDL_PER_MIN", 3.0),
        stale_after=timedelta(minutes=_setting("ALERT_STALE_MINUTES", 30)),
    )


@dataclass(frozen=True, slots=True)
class Conditions:
    """The alert kinds whose condition holds now, with the details the app shows."""

    active: frozenset[str]
    details: dict[str, dict[str, object]] = field(default_factory=dict)


def evaluate(
    *,
    readings: Sequence[Reading],
    now: datetime,
    thresholds: Thresholds,
    predicted_low_probability: float | None,
    app_active: bool,
) -> Conditions:
    """Which alert conditions hold at `now`. `readings` are sorted by time, oldest first."""
    active: set[str] = set()
    details: dict[str, dict[str, object]] = {}
    latest = readings[-1] if readings else None
    fresh = latest is not None and now - latest.at <= RECENT
    if latest is not None and fresh:
        value = latest.mgdl
        if value < URGENT_LOW_MGDL:
            active.add("urgent_low")
            details["urgent_low"] = {"mgdl": value, "at": latest.at.isoformat()}
        if value < thresholds.low_mgdl:
            active.add("low")
            details["low"] = {"mgdl": value, "at": latest.at.isoformat(), "threshold": thresholds.low_mgdl}
        window = [r for r in readings if r.at >= latest.at - thresholds.high_sustained]
        # Sustained means the whole window is covered (a reading within half a CGM interval of its start)
        # and every value in it is high.
        covered = bool(window) and window[0].at <= latest.at - thresholds.high_sustained + timedelta(minutes=2.5)
        if covered and all(r.mgdl > thresholds.high_mgdl for r in window):
            active.add("high")
            details["high"] = {"mgdl": value, "since": window[0].at.isoformat(), "threshold": thresholds.high_mgdl}
        rate = rise_rate(readings, window=thresholds.rise_window)
        if rate is not None and rate >= thresholds.rise_mgdl_per_min:
            active.add("rising_fast")
            details["rising_fast"] = {"mgdl_per_min": round(rate, 2), "mgdl": value}
    if (
        predicted_low_probability is not None
        and predicted_low_probability >= thresholds.predicted_low_probability
        and "low" not in active  # already low: the low alert says more than the forecast
        and fresh
    ):
        active.add("predicted_low")
        details["predicted_low"] = {"probability": round(predicted_low_probability, 3), "minutes": 30}
    if app_active and latest is not None and now - latest.at >= thresholds.stale_after:
        active.add("stale_sensor")
        details["stale_sensor"] = {"last_reading_at": latest.at.isoformat()}
    return Conditions(frozenset(active), details)


def rise_rate(readings: Sequence[Reading], *, window: timedelta) -> float | None:
    """mg/dL per minute between the first and last reading of the window; None without two readings ≥10 min apart."""
    if len(readings) < 2:
        return None
    last = readings[-1]
    inside = [r for r in readings if r.at >= last.at - window]
    first = inside[0]
    minutes = (last.at - first.at).total_seconds() / 60
    if minutes < 10:
        return None
    return (last.mgdl - first.mgdl) / minutes


# Cooldowns: after an alert, another of the same kind waits this long even if a new episode
# starts (a reading bouncing across the threshold is one event for the patient). Configurable
# through NOTIFY_COOLDOWN_MINUTES; defaults in docs/notifications.md.
DEFAULT_COOLDOWN_MINUTES: dict[str, int] = {
    "urgent_low": 10,
    "low": 30,
    "predicted_low": 30,
    "high": 120,
    "rising_fast": 60,
    "stale_sensor": 60,
}


def cooldown(kind: str) -> timedelta:
    overrides: dict[str, int] = getattr(settings, "NOTIFY_COOLDOWN_MINUTES", {})
    return timedelta(minutes=overrides.get(kind, DEFAULT_COOLDOWN_MINUTES.get(kind, 30)))


# An urgent low implies a low: the patient gets the most severe alert of a family, not both.
SUPERSEDES: dict[str, frozenset[str]] = {
    "urgent_low": frozenset({"low", "predicted_low"}),
    "low": frozenset({"predicted_low"}),
}
