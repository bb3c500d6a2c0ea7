"""Reminders in the patient's local time, fired by Celery beat (`notifications.fire_reminders`, every minute).

Each reminder stores its next UTC instant. Beat fires due rows by advancing `next_fire_at`
with a conditional UPDATE (only the first of two racing or redelivered runs wins) and
creating the notification under the dedupe key `reminder:<id>:<instant>` in the same
transaction, so a restarted worker never fires one twice.

Local times are resolved per local date with zoneinfo, so DST days behave as people expect:
- a time skipped by the spring-forward gap (02:30 on a 02:00→03:00 day) fires an hour later
  by the wall clock (03:30), once;
- a time repeated by the autumn fall-back (01:30 twice) fires at its first occurrence, once.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.db import transaction
from django.utils import timezone

from glucoscope.patients.models import Patient, User
from notifications.models import Kind, Reminder, ReminderKind
from notifications.services import NotificationError, notification_create

logger = logging.getLogger(__name__)

ERR_KIND = "kind must be one of: medication, insulin, glucose_check, meal_log, sensor_change."
ERR_TIME = "local_time must be a local time as HH:MM."
ERR_WEEKDAYS = "weekdays must be a list of ISO weekdays 1 (Monday) to 7 (Sunday)."
ERR_EVERY_N_DAYS = "every_n_days must be a whole number from 1 to 90."
ERR_SCHEDULE = "Give weekdays or every_n_days, not both."
ERR_LABEL = "label may have at most 120 characters."
ERR_START_DATE = "start_date must be a date as YYYY-MM-DD."
ERR_UNKNOWN_FIELD = "Unknown field."
ERR_TOO_MANY = "A patient may have at most {limit} reminders."
MAX_REMINDERS_PER_PATIENT = 50
REMINDER_FIELDS = frozenset({"kind", "label", "local_time", "weekdays", "every_n_days", "start_date", "is_active"})
# A missed minute (beat down) still fires if it is at most this late; older ones are skipped, not sent at 3 a.m.
MAX_LATENESS = timedelta(hours=2)


def _local_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock `at` on `day`. Gap times move forward by the gap (fold=0, PEP 495)."""
    local = datetime.combine(day, at, tzinfo=zone)
    # Round-tripping through UTC normalises a non-existent local time to the wall clock after the gap.
    return local.astimezone(UTC)


def _fires_on(reminder: Reminder, day: date) -> bool:
    if day < reminder.start_date:
        return False
    if reminder.every_n_days:
        return (day - reminder.start_date).days % reminder.every_n_days == 0
    weekdays = reminder.weekdays or list(range(1, 8))
    return day.isoweekday() in weekdays


def next_fire_after(*, reminder: Reminder, zone: ZoneInfo, after: datetime) -> datetime:
    """The first scheduled instant strictly after `after` (UTC)."""
    day = max(after.astimezone(zone).date() - timedelta(days=1), reminder.start_date)
    for _ in range(800):
        if _fires_on(reminder, day):
            instant = _local_instant(day, reminder.local_time, zone)
            if instant > after:
                return instant
        day += timedelta(days=1)
    raise ValueError("no occurrence in the next 800 days")


def _validate(changes: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for name in changes:
        if name not in REMINDER_FIELDS:
            raise NotificationError(name, ERR_UNKNOWN_FIELD)
    if "kind" in changes or not partial:
        if changes.get("kind") not in ReminderKind.values:
            raise NotificationError("kind", ERR_KIND)
        clean["kind"] = changes["kind"]
    if "local_time" in changes or not partial:
        value = changes.get("local_time")
        try:
            if not isinstance(value, str):
                raise ValueError
            clean["local_time"] = time.fromisoformat(value).replace(second=0, microsecond=0, tzinfo=None)
        except ValueError:
            raise NotificationError("local_time", ERR_TIME) from None
    if "label" in changes:
        if not isinstance(changes["label"], str) or len(changes["label"]) > 120:
            raise NotificationError("label", ERR_LABEL)
        clean["label"] = changes["label"]
    if "weekdays" in changes:
        days = changes["weekdays"]
        if not isinstance(days, list) or len(days) > 7 or any(type(d) is not int or not 1 <= d <= 7 for d in days):
            raise NotificationError("weekdays", ERR_WEEKDAYS)
        clean["weekdays"] = sorted(set(days))
    if "every_n_days" in changes:
        n = changes["every_n_days"]
        if n is not None and (type(n) is not int or not 1 <= n <= 90):
            raise NotificationError("every_n_days", ERR_EVERY_N_DAYS)
        clean["every_n_days"] = n
    if clean.get("weekdays") and clean.get("every_n_days"):
        raise NotificationError("every_n_days", ERR_SCHEDULE)
    if "start_date" in changes:
        try:
            if not isinstance(changes["start_date"], str):
                raise ValueError
            clean["start_date"] = date.fromisoformat(changes["start_date"])
        except ValueError:
            raise NotificationError("start_date", ERR_START_DATE) from None
    if "is_active" in changes:
        if not isinstance(changes["is_active"], bool):
            raise NotificationError("is_active", "is_active must be true or false.")
        clean["is_active"] = changes["is_active"]
    return clean


def reminder_create(*, patient: Patient, created_by: User, data: dict[str, Any], now: datetime | None = None) -> Reminder:
    now = now or timezone.now()
    clean = _validate(data, partial=False)
    if Reminder.objects.filter(patient=patient, deleted_at__isnull=True).count() >= MAX_REMINDERS_PER_PATIENT:
        raise NotificationError("non_field_errors", ERR_TOO_MANY.format(limit=MAX_REMINDERS_PER_PATIENT))
    zone = ZoneInfo(patient.time_zone)
    clean.setdefault("start_date", now.astimezone(zone).date())
    reminder = Reminder(patient=patient, created_by=created_by, next_fire_at=now, **clean)
    reminder.next_fire_at = next_fire_after(reminder=reminder, zone=zone, after=now)
    reminder.save()
    return reminder


def reminder_update(*, reminder: Reminder, data: dict[str, Any], now: datetime | None = None) -> Reminder:
    now = now or timezone.now()
    clean = _validate(data, partial=True)
    for name, value in clean.items():
        setattr(reminder, name, value)
    if reminder.weekdays and reminder.every_n_days:
        raise NotificationError("every_n_days", ERR_SCHEDULE)
    reminder.next_fire_at = next_fire_after(reminder=reminder, zone=ZoneInfo(reminder.patient.time_zone), after=now)
    reminder.save()
    return reminder


def reminder_text(reminder: Reminder) -> tuple[str, str]:
    titles = {
        ReminderKind.MEDICATION: "Medication reminder", ReminderKind.INSULIN: "Insulin reminder",
        ReminderKind.GLUCOSE_CHECK: "Time to check your glucose", ReminderKind.MEAL_LOG: "Log your meal",
        ReminderKind.SENSOR_CHANGE: "Time to change your sensor",
    }
    return titles[ReminderKind(reminder.kind)], reminder.label or "Open GlucoScope."


def reminders_fire_due(*, now: datetime | None = None) -> list[int]:
    """Fire every reminder whose instant has come; returns the notification ids created."""
    now = now or timezone.now()
    created: list[int] = []
    due = Reminder.objects.filter(is_active=True, deleted_at__isnull=True, next_fire_at__lte=now).select_related("patient__user")[:5000]
    for reminder in due:
        zone = ZoneInfo(reminder.patient.time_zone)
        scheduled = reminder.next_fire_at
        # Strictly after `scheduled`; after a long beat outage, jump to the occurrences still worth sending.
        following = next_fire_after(reminder=reminder, zone=zone, after=max(scheduled, now - MAX_LATENESS))
        with transaction.atomic():
            # The claim: only the run that moves next_fire_at from `scheduled` fires this occurrence.
            if not Reminder.objects.filter(pk=reminder.pk, next_fire_at=scheduled).update(next_fire_at=following):
                continue
            if now - scheduled > MAX_LATENESS:
                logger.info("Reminder %s skipped an occurrence %s late", reminder.pk, now - scheduled)
                continue
            notification = notification_create(
                patient=reminder.patient, recipient=reminder.patient.user, kind=Kind.REMINDER,
                details={"reminder_id": reminder.pk, "kind": reminder.kind, "label": reminder.label,
                         "scheduled_for": scheduled.isoformat()},
                text=reminder_text(reminder), dedupe_key=f"reminder:{reminder.pk}:{scheduled.isoformat()}",
                reminder_id=reminder.pk, now=now, defer_in_quiet_hours=True,
            )
            if notification is not None:
                created.append(notification.pk)
    return created


def reminder_delete(*, reminder: Reminder, now: datetime | None = None) -> Reminder:
    """Idempotent: deleting twice is the same as once."""
    Reminder.objects.filter(pk=reminder.pk, deleted_at__isnull=True).update(deleted_at=now or timezone.now(), is_active=False)
    reminder.refresh_from_db()
    return reminder
