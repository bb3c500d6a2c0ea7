"""Alert rules on plain lists: which conditions hold for a given recent history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from notifications.rules import SUPERSEDES, Reading, Thresholds, cooldown, evaluate, rise_rate

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def series(values: list[float], *, end: datetime = NOW) -> list[Reading]:
    return [Reading(end - timedelta(minutes=5 * (len(values) - 1 - i)), v) for i, v in enumerate(values)]


def active(values: list[float], *, probability: float | None = None, app_active: bool = False,
           end: datetime = NOW, thresholds: Thresholds | None = None) -> frozenset[str]:
    return evaluate(readings=series(values, end=end), now=NOW, thresholds=thresholds or Thresholds(),
                    predicted_low_probability=probability, app_active=app_active).active


def test_under_55_is_an_urgent_low_and_a_low() -> None:
    assert active([80, 70, 60, 54]) == {"urgent_low", "low"}
    assert "urgent_low" not in active([80, 70, 60, 55])


def test_a_low_is_under_the_patients_own_threshold() -> None:
    assert active([100, 90, 79], thresholds=Thresholds(low_mgdl=80)) == {"low"}
    assert active([100, 90, 80], thresholds=Thresholds(low_mgdl=80)) == frozenset()


def test_an_old_reading_raises_no_glucose_alert() -> None:
    assert active([50], end=NOW - timedelta(minutes=20)) == frozenset()


def test_predicted_low_needs_the_probability_over_the_patients_threshold_and_fresh_data() -> None:
    assert active([120, 110, 100], probability=0.6) == {"predicted_low"}
    assert active([120, 110, 100], probability=0.4) == frozenset()
    assert active([120, 110, 100], probability=0.4, thresholds=Thresholds(predicted_low_probability=0.3)) == {"predicted_low"}
    # Already low: the low alert supersedes the forecast.
    assert active([80, 70, 65], probability=0.9) == {"low"}


def test_high_must_be_sustained_for_30_minutes() -> None:
    assert "high" in active([260] * 7)  # 30 min of readings, all above 250
    assert "high" not in active([240] + [260] * 6)  # one reading at the start of the window under
    assert "high" not in active([260] * 4)  # only 15 min of data: not sustained yet


def test_rising_fast_is_3_mgdl_per_minute_over_15_minutes() -> None:
    assert "rising_fast" in active([100, 115, 130, 145])  # 45 mg/dL in 15 min = 3/min
    assert "rising_fast" not in active([100, 110, 120, 130])  # 2/min
    assert rise_rate(series([100, 200]), window=timedelta(minutes=15)) is None  # 5 min is too short to judge


def test_stale_sensor_only_while_the_app_is_active() -> None:
    old = NOW - timedelta(minutes=35)
    assert active([120], end=old, app_active=True) == {"stale_sensor"}
    assert active([120], end=old, app_active=False) == frozenset()
    assert active([], app_active=True) == frozenset()  # never had data: nothing went stale


def test_cooldowns_and_supersession_are_defined_for_every_glucose_alert() -> None:
    assert cooldown("urgent_low") == timedelta(minutes=10) and cooldown("high") == timedelta(minutes=120)
    assert SUPERSEDES["urgent_low"] == {"low", "predicted_low"}


def test_cooldowns_are_configurable(settings) -> None:  # type: ignore[no-untyped-def]
    settings.NOTIFY_COOLDOWN_MINUTES = {"low": 5}
    assert cooldown("low") == timedelta(minutes=5)
