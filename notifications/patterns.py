"""Glucose patterns from the patient's own data, which choose the relevant tips (pure numpy, no Django).

Each detector takes local wall-clock times (naive datetimes in the patient's zone) and mg/dL
values over the last two weeks. Thresholds are product choices, marked configurable in
docs/notifications.md, except the CV limit (≤36%, Battelino et al., Diabetes Care 2019).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

# Local meal windows (start hour, end hour) for rises detected without logged meals.
MEAL_WINDOWS = {"breakfast_spike": (6, 10), "lunch_spike": (11, 14), "dinner_spike": (17, 21)}
SPIKE_RISE_MGDL = 60.0  # a rise of ≥60 mg/dL within 2 h of a meal: a clear post-meal excursion
SPIKE_DAY_FRACTION = 0.4  # the pattern holds on at least 40% of days with data in that window
NIGHT_LOW_MGDL = 70.0  # level 1 hypoglycaemia (Battelino 2019)
NIGHT_LOW_NIGHTS = 2
CV_LIMIT = 0.36  # Battelino 2019: CV ≤36% is "stable"
EVENING_ABOVE_180_FRACTION = 0.5

# Most specific first: the first detected pattern is the bandit's context.
PRIORITY = ("night_lows", "breakfast_spike", "lunch_spike", "dinner_spike", "evening_highs", "high_variability")
GENERAL = "general"


@dataclass(frozen=True, slots=True)
class Meal:
    at: datetime  # local time of a logged carbohydrate treatment


def _by_day(times: Sequence[datetime]) -> dict[object, list[int]]:
    days: dict[object, list[int]] = {}
    for i, t in enumerate(times):
        days.setdefault(t.date(), []).append(i)
    return days


def meal_spikes(times: Sequence[datetime], values: np.ndarray, meals: Sequence[Meal] = ()) -> set[str]:
    """Windows where glucose rises ≥60 mg/dL after a meal on ≥40% of days.

    With logged meals, the rise is peak within 2 h minus the value at the meal; without, it is the
    largest rise from a trough to a later peak inside the window (a detected rise).
    """
    found: set[str] = set()
    stamps = np.array([t.timestamp() for t in times]) if times else np.array([])
    for name, (start, end) in MEAL_WINDOWS.items():
        days_with_data = spike_days = 0
        window_meals = [m for m in meals if start <= m.at.hour < end]
        if window_meals:
            for meal in window_meals:
                t0 = meal.at.timestamp()
                before = np.where((stamps >= t0 - 900) & (stamps <= t0 + 300))[0]
                after = np.where((stamps > t0) & (stamps <= t0 + 7200))[0]
                if not len(before) or not len(after):
                    continue
                days_with_data += 1
                if values[after].max() - values[before[-1]] >= SPIKE_RISE_MGDL:
                    spike_days += 1
        else:
            for indices in _by_day(times).values():
                inside = [i for i in indices if start <= times[i].hour < end + 2]
                if len(inside) < 12:
                    continue
                days_with_data += 1
                v = values[inside]
                # Largest rise from a trough to a later peak: running minimum against each value.
                if float(np.max(v - np.minimum.accumulate(v))) >= SPIKE_RISE_MGDL:
                    spike_days += 1
        if days_with_data >= 3 and spike_days / days_with_data >= SPIKE_DAY_FRACTION:
            found.add(name)
    return found


def night_lows(times: Sequence[datetime], values: np.ndarray) -> bool:
    nights = {t.date() for t, v in zip(times, values, strict=True) if t.hour < 6 and v < NIGHT_LOW_MGDL}
    return len(nights) >= NIGHT_LOW_NIGHTS


def high_variability(values: np.ndarray) -> bool:
    return len(values) >= 288 and float(np.std(values) / np.mean(values)) > CV_LIMIT


def evening_highs(times: Sequence[datetime], values: np.ndarray) -> bool:
    evening = np.array([v for t, v in zip(times, values, strict=True) if t.hour >= 18])
    return len(evening) >= 36 and float(np.mean(evening > 180)) > EVENING_ABOVE_180_FRACTION


def detect(times: Sequence[datetime], values: Sequence[float], meals: Sequence[Meal] = ()) -> list[str]:
    """The patterns present, most specific first; empty when nothing stands out."""
    v = np.asarray(values, dtype=float)
    found = meal_spikes(times, v, meals) if len(v) else set()
    if len(v) and night_lows(times, v):
        found.add("night_lows")
    if len(v) and high_variability(v):
        found.add("high_variability")
    if len(v) and evening_highs(times, v):
        found.add("evening_highs")
    return [p for p in PRIORITY if p in found]


LOOKBACK = timedelta(days=14)
