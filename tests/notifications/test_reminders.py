"""Reminders fire in the patient's local time, across daylight-saving changes, once each."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from notifications import reminders, services
from notifications.models import Kind, Notification, Reminder, Status
from tests.factories import PatientFactory

pytestmark = pytest.mark.django_db

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")


def make(patient, local_time: str, *, now: datetime, **data) -> Reminder:  # type: ignore[no-untyped-def]
    return reminders.reminder_create(patient=patient, created_by=patient.user, now=now,
                                     data={"kind": "insulin", "local_time": local_time, **data})


def fire_every_minute(start: datetime, end: datetime) -> list[int]:
    """Run the beat task for every minute from start to end, as beat would."""
    created = []
    moment = start
    while moment <= end:
        created += reminders.reminders_fire_due(now=moment)
        moment += timedelta(minutes=1)
    return created


def fire_times(patient) -> list[str]:  # type: ignore[no-untyped-def]
    return [n.details["scheduled_for"] for n in Notification.objects.filter(patient=patient, kind=Kind.REMINDER).order_by("pk")]


def test_a_daily_reminder_fires_at_local_time_on_both_sides_of_the_spring_change() -> None:
    # Europe/London springs forward on 2026-03-29 at 01:00 UTC: 08:00 local is 08:00 UTC before, 07:00 UTC after.
    patient = PatientFactory(time_zone="Europe/London")
    start = datetime(2026, 3, 28, 0, 0, tzinfo=UTC)
    reminder = make(patient, "08:00", now=start)
    assert reminder.next_fire_at == datetime(2026, 3, 28, 8, 0, tzinfo=UTC)
    for _ in range(3):
        reminders.reminders_fire_due(now=Reminder.objects.get(pk=reminder.pk).next_fire_at)
    assert fire_times(patient) == ["2026-03-28T08:00:00+00:00", "2026-03-29T07:00:00+00:00", "2026-03-30T07:00:00+00:00"]
    assert {datetime.fromisoformat(t).astimezone(LONDON).time() for t in fire_times(patient)} == {time(8, 0)}


def test_a_time_inside_the_spring_gap_fires_once_an_hour_later_by_the_clock() -> None:
    # 2026-03-08 in New York: 02:00 → 03:00. A 02:30 reminder has no 02:30 that day.
    patient = PatientFactory(time_zone="America/New_York")
    start = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)
    make(patient, "02:30", now=start)
    fire_every_minute(datetime(2026, 3, 8, 5, 0, tzinfo=UTC), datetime(2026, 3, 8, 9, 0, tzinfo=UTC))
    [fired] = fire_times(patient)
    assert datetime.fromisoformat(fired).astimezone(NEW_YORK).strftime("%H:%M") == "03:30"


def test_a_time_repeated_by_the_autumn_change_fires_once() -> None:
    # 2026-11-01 in New York: 01:00–02:00 happens twice. A 01:30 reminder fires at the first one only.
    patient = PatientFactory(time_zone="America/New_York")
    make(patient, "01:30", now=datetime(2026, 10, 31, 12, 0, tzinfo=UTC))
    fire_every_minute(datetime(2026, 11, 1, 4, 0, tzinfo=UTC), datetime(2026, 11, 1, 8, 0, tzinfo=UTC))
    [fired] = fire_times(patient)
    assert fired == "2026-11-01T05:30:00+00:00"  # 01:30 EDT (UTC−4), not 01:30 EST at 06:30 UTC


def test_the_autumn_change_in_london_keeps_the_local_time() -> None:
    patient = PatientFactory(time_zone="Europe/London")
    reminder = make(patient, "21:00", now=datetime(2026, 10, 24, 12, 0, tzinfo=UTC))
    for _ in range(2):
        reminders.reminders_fire_due(now=Reminder.objects.get(pk=reminder.pk).next_fire_at)
    assert fire_times(patient) == ["2026-10-24T20:00:00+00:00", "2026-10-25T21:00:00+00:00"]


def test_running_the_beat_task_twice_or_after_a_restart_never_fires_twice() -> None:
    patient = PatientFactory(time_zone="Europe/London")
    reminder = make(patient, "08:00", now=datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    due = reminder.next_fire_at
    assert len(reminders.reminders_fire_due(now=due)) == 1
    assert reminders.reminders_fire_due(now=due) == []
    assert reminders.reminders_fire_due(now=due + timedelta(seconds=30)) == []
    # A redelivered task that saw the old next_fire_at cannot claim it again: the dedupe key also holds.
    Reminder.objects.filter(pk=reminder.pk).update(next_fire_at=due)
    assert reminders.reminders_fire_due(now=due) == []
    assert Notification.objects.filter(patient=patient, kind=Kind.REMINDER).count() == 1


def test_weekdays_and_every_n_days() -> None:
    patient = PatientFactory(time_zone="UTC")
    start = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)  # a Monday
    weekday = make(patient, "09:00", now=start, weekdays=[6, 7])
    assert weekday.next_fire_at == datetime(2026, 6, 6, 9, 0, tzinfo=UTC)
    sensor = reminders.reminder_create(patient=patient, created_by=patient.user, now=start, data={
        "kind": "sensor_change", "local_time": "19:00", "every_n_days": 10, "start_date": "2026-05-30"})
    assert sensor.next_fire_at == datetime(2026, 6, 9, 19, 0, tzinfo=UTC)
    assert reminders.next_fire_after(reminder=sensor, zone=ZoneInfo("UTC"), after=sensor.next_fire_at) == datetime(2026, 6, 19, 19, 0, tzinfo=UTC)
    assert sensor.start_date == date(2026, 5, 30)


def test_a_reminder_in_quiet_hours_waits_until_they_end() -> None:
    patient = PatientFactory(time_zone="Europe/London")
    services.preference_update(patient=patient, changes={"quiet_start": "22:00", "quiet_end": "07:00"})
    reminder = make(patient, "06:00", now=datetime(2026, 7, 1, 0, 0, tzinfo=UTC))
    [notification_id] = reminders.reminders_fire_due(now=reminder.next_fire_at)
    notification = Notification.objects.get(pk=notification_id)
    assert notification.status == Status.QUEUED
    assert notification.send_after == datetime(2026, 7, 1, 6, 0, tzinfo=UTC)  # 07:00 BST


def test_a_long_outage_skips_stale_occurrences_instead_of_firing_them_late() -> None:
    patient = PatientFactory(time_zone="UTC")
    reminder = make(patient, "08:00", now=datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    assert reminders.reminders_fire_due(now=datetime(2026, 6, 3, 12, 0, tzinfo=UTC)) == []
    assert Reminder.objects.get(pk=reminder.pk).next_fire_at == datetime(2026, 6, 4, 8, 0, tzinfo=UTC)


def test_inactive_and_deleted_reminders_do_not_fire() -> None:
    patient = PatientFactory(time_zone="UTC")
    paused = make(patient, "08:00", now=datetime(2026, 6, 1, 0, 0, tzinfo=UTC), is_active=False)
    deleted = make(patient, "08:00", now=datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    reminders.reminder_delete(reminder=deleted)
    assert reminders.reminders_fire_due(now=paused.next_fire_at + timedelta(minutes=1)) == []


def test_reminder_text_stays_out_of_the_push_unless_details_are_allowed(settings) -> None:  # type: ignore[no-untyped-def]
    patient = PatientFactory(time_zone="UTC")
    reminder = make(patient, "08:00", now=datetime(2026, 6, 1, 0, 0, tzinfo=UTC), label="Metformin 500 mg")
    [generic_id] = reminders.reminders_fire_due(now=reminder.next_fire_at)
    generic = Notification.objects.get(pk=generic_id)
    assert (generic.title, generic.body) == ("Reminder", "Open GlucoScope.") and generic.details["label"] == "Metformin 500 mg"
    settings.PUSH_INCLUDE_DETAILS = True
    [detailed_id] = reminders.reminders_fire_due(now=Reminder.objects.get(pk=reminder.pk).next_fire_at)
    detailed = Notification.objects.get(pk=detailed_id)
    assert (detailed.title, detailed.body) == ("Insulin reminder", "Metformin 500 mg")
