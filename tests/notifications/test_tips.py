"""Diet tips: the library files, pattern detection, the Thompson-sampling bandit and its simulation, sending limits."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from django.core.management import call_command

from notifications import bandit, patterns, services, tips
from notifications.models import Kind, Notification, Status, Tip, TipEngagement
from tests.factories import PatientFactory
from tests.notifications.conftest import add_readings

# --- Library -------------------------------------------------------------------------------


def test_every_tip_has_a_known_category_and_text_in_english_and_spanish() -> None:
    library = json.loads((tips.TIPS_DIR / "library.json").read_text())
    entries = tips.library_from_files()
    assert len(entries) == len(library["tips"]) >= 15
    for entry in entries:
        assert entry["category"] in library["categories"]
        assert set(entry["texts"]) >= {"en", "es"}  # type: ignore[arg-type]
        assert set(entry["patterns"]) <= set(patterns.PRIORITY)  # type: ignore[arg-type]


@pytest.mark.django_db
def test_sync_adds_new_tips_and_keeps_admin_edits_unless_overwritten() -> None:
    call_command("sync_tips")
    count = Tip.objects.count()
    Tip.objects.filter(tip_id="plate-method").update(texts={"en": "Edited by the care team"})
    call_command("sync_tips")
    assert Tip.objects.count() == count and Tip.objects.get(tip_id="plate-method").texts["en"] == "Edited by the care team"
    call_command("sync_tips", "--overwrite")
    assert Tip.objects.get(tip_id="plate-method").texts["en"].startswith("A simple plate")


# --- Patterns ------------------------------------------------------------------------------


def day_profile(days: int, shape) -> tuple[list[datetime], list[float]]:  # type: ignore[no-untyped-def]
    start = datetime(2026, 6, 1)
    times = [start + timedelta(minutes=5 * i) for i in range(days * 288)]
    return times, [float(shape(t)) for t in times]


def test_breakfast_spikes_are_detected_from_rises_without_logged_meals() -> None:
    times, values = day_profile(7, lambda t: 180 if 8 <= t.hour < 10 else 110)
    assert patterns.detect(times, values)[0] == "breakfast_spike"


def test_spikes_are_measured_from_logged_meals_when_there_are_some() -> None:
    times, values = day_profile(5, lambda t: 200 if 19 <= t.hour < 20 else 110)
    meals = [patterns.Meal(datetime(2026, 6, 1 + d, 18, 30)) for d in range(5)]
    assert "dinner_spike" in patterns.detect(times, values, meals)


def test_night_lows_come_first() -> None:
    times, values = day_profile(7, lambda t: 62 if t.hour == 3 else (190 if 8 <= t.hour < 10 else 120))
    found = patterns.detect(times, values)
    assert found[0] == "night_lows" and "breakfast_spike" in found


def test_high_variability_and_evening_highs() -> None:
    rng = np.random.default_rng(0)
    times, values = day_profile(3, lambda t: 0)
    noisy = list(np.clip(rng.normal(150, 70, len(values)), 40, 400))
    assert "high_variability" in patterns.detect(times, noisy)
    times, values = day_profile(3, lambda t: 230 if t.hour >= 18 else 120)
    assert "evening_highs" in patterns.detect(times, values)


def test_a_steady_profile_has_no_pattern() -> None:
    times, values = day_profile(7, lambda t: 115)
    assert patterns.detect(times, values) == []
    assert patterns.detect([], []) == []


# --- Bandit --------------------------------------------------------------------------------


def test_thompson_sampling_prefers_what_the_patient_found_helpful_in_that_context() -> None:
    sampler = bandit.ThompsonSampler()
    for _ in range(20):
        sampler.update(context="dinner_spike", category="activity", reward=1.0)
        sampler.update(context="dinner_spike", category="meal_composition", reward=0.0)
    rng = random.Random(3)
    picks = [sampler.choose(context="dinner_spike", categories=["activity", "meal_composition"], rng=rng) for _ in range(200)]
    assert picks.count("activity") > 190
    # Another context borrows a little of that evidence, but stays exploratory.
    a, b = sampler.posterior(context="night_lows", category="activity")
    assert a > b and a < 10


def test_the_offline_simulation_gains_clearly_over_random_choice() -> None:
    result = bandit.simulate(patients=120, days=42, seed=11)
    assert result.gain > 0.25, result
    assert result.bandit_by_week[-1] > result.bandit_by_week[0]
    assert result.random_reward_rate < result.bandit_reward_rate < result.oracle_reward_rate


# --- Sending -------------------------------------------------------------------------------

def at_local(patient, hour: int, minute: int = 0) -> datetime:  # type: ignore[no-untyped-def]
    return datetime(2026, 6, 10, hour, minute, tzinfo=ZoneInfo(patient.time_zone)).astimezone(UTC)


@pytest.mark.django_db
def test_a_tip_goes_out_in_the_first_slot_chosen_for_the_patients_pattern(settings) -> None:  # type: ignore[no-untyped-def]
    patient = PatientFactory(time_zone="Europe/Madrid")
    services.preference_update(patient=patient, changes={"language": "es"})
    now = at_local(patient, 10, 5)
    assert tips.tip_send(patient=patient, now=at_local(patient, 9, 55)) is None  # before the first slot
    end, count = now - timedelta(hours=1), 288 * 7
    local_hours = [(end - timedelta(minutes=5 * (count - 1 - i))).astimezone(ZoneInfo("Europe/Madrid")).hour for i in range(count)]
    add_readings(patient, [62.0 if hour == 3 else 120.0 for hour in local_hours], end=end)  # lows at 03:00 every night
    notification = tips.tip_send(patient=patient, now=now, rng=random.Random(1))
    assert notification is not None and notification.kind == Kind.TIP
    engagement = TipEngagement.objects.get(notification=notification)
    assert engagement.context == "night_lows" and engagement.category in {"hypo_prevention", "activity"}
    assert notification.details["text"] == Tip.objects.get(tip_id=notification.tip_id).texts["es"]
    assert tips.tip_send(patient=patient, now=now + timedelta(minutes=15)) is None  # one tip a day by default


@pytest.mark.django_db
def test_no_tip_in_quiet_hours_after_the_evening_cutoff_or_near_an_alert() -> None:
    patient = PatientFactory(time_zone="UTC")
    services.preference_update(patient=patient, changes={"quiet_start": "09:00", "quiet_end": "11:00"})
    assert tips.tip_send(patient=patient, now=at_local(patient, 10, 30)) is None
    assert tips.tip_send(patient=patient, now=at_local(patient, 21, 0)) is None
    services.notification_create(patient=patient, recipient=patient.user, kind=Kind.HIGH, now=at_local(patient, 11, 30))
    assert tips.tip_send(patient=patient, now=at_local(patient, 12, 0)) is None
    assert tips.tip_send(patient=patient, now=at_local(patient, 12, 45)) is not None


@pytest.mark.django_db
def test_a_queued_tip_is_dropped_if_an_alert_came_first(transport, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    patient = PatientFactory(time_zone="UTC")
    services.device_register(user=patient.user, token="tip-phone", platform="android")
    now = datetime.now(UTC).replace(hour=12)
    with django_capture_on_commit_callbacks(execute=False):
        tip = tips.tip_send(patient=patient, now=now)
        services.notification_create(patient=patient, recipient=patient.user, kind=Kind.URGENT_LOW, now=now)
    assert tip is not None
    services.notifications_deliver(notification_ids=[tip.pk], transport=transport, now=now + timedelta(seconds=1))
    tip.refresh_from_db()
    assert (tip.status, tip.reason) == (Status.SUPPRESSED, "near_alert")


@pytest.mark.django_db
def test_feedback_is_the_bandits_reward() -> None:
    patient = PatientFactory(time_zone="UTC")
    notification = tips.tip_send(patient=patient, now=at_local(patient, 10, 30))
    assert notification is not None
    services.notification_receipt(notification=notification, event="opened")
    assert TipEngagement.objects.get(notification=notification).reward == 1.0
    services.notification_feedback(notification=notification, feedback="dismissed")
    assert TipEngagement.objects.get(notification=notification).reward == 0.0
    services.notification_receipt(notification=notification, event="opened")  # a later open does not undo feedback
    assert TipEngagement.objects.get(notification=notification).reward == 0.0


@pytest.mark.django_db
def test_the_beat_task_sends_tips_only_to_patients_with_an_active_app() -> None:
    with_app, without_app = PatientFactory(time_zone="UTC"), PatientFactory(time_zone="UTC")
    services.device_register(user=with_app.user, token="beat-phone", platform="ios")
    now = datetime.now(UTC).replace(hour=15, minute=0)
    sent = tips.tips_send_due(now=now)
    assert [Notification.objects.get(pk=pk).patient for pk in sent] == [with_app]
    assert tips.tips_send_due(now=now + timedelta(minutes=15)) == []
    assert without_app.notifications.count() == 0
