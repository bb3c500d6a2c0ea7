"""Notification writes: devices, preferences, creating rows, claiming and delivering them, alert rules,
escalation, acknowledgements and the sweeper.

The life of a notification (GUIDE.md §3 step 4, §4):
1. A service creates the row (`queued`, or `suppressed` with a reason) inside a transaction; its
   `dedupe_key` is unique, so a replayed rule or reminder cannot create it twice.
2. After the commit, `notifications.send` is enqueued with the id. If Redis is down the row waits
   for the beat sweeper: an outage delays notifications but loses none.
3. The task claims due rows with one conditional UPDATE (queued → sending) and only claimed rows
   are pushed, so a redelivered task never pushes twice.
4. FCM outcomes move the row to `sent`, `failed` (with the reason), `not_configured`, or back to
   `queued` with a backoff when FCM is overloaded or down. Dead tokens are deactivated.
5. The app reports `delivered`, `opened` and `acked`.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F, OuterRef, Q, Subquery
from django.utils import timezone

from glucoscope.observability.metrics import observe_delivery
from glucoscope.patients.models import CaregiverLink, Patient, Role, User
from notifications import rules
from notifications.fcm import FcmTransport, PushMessage, backoff_delay, transport_from_settings
from notifications.models import (
    ALERT_KINDS,
    URGENT_KINDS,
    AlertEpisode,
    DeviceToken,
    Feedback,
    Kind,
    Notification,
    Platform,
    Preference,
    Status,
    TipEngagement,
)

logger = logging.getLogger(__name__)

ERR_TOKEN_REQUIRED = "A device token (1 to 4096 characters) is required."
ERR_PLATFORM = "platform must be one of: android, ios, web."
ERR_TOKEN_NOT_FOUND = "No such device token for this account."
ERR_FIELD_TOO_LONG = "At most {limit} characters."
ERR_UNKNOWN_FIELD = "Unknown field."
ERR_THRESHOLD_BOUNDS = "Must be between {low} and {high} mg/dL (your care team's bounds)."
ERR_THRESHOLDS_ORDER = "The low threshold must be below the high threshold."
ERR_BOUNDS = "Each minimum must not exceed its maximum."
ERR_PROBABILITY = "A probability between 0.05 and 0.95."
ERR_TIME = "A local time as HH:MM."
ERR_QUIET_PAIR = "Set both quiet_start and quiet_end, or neither."
ERR_KINDS = "A list of notification kinds; urgent alerts cannot be turned off."
ERR_FOLLOWER = "Each follower must be a caregiver you invited (user id)."
ERR_INTEGER = "A whole number between {low} and {high}."
ERR_LANGUAGE = "A supported language: {languages}."
ERR_FEEDBACK = "feedback must be one of: helpful, not_helpful, dismissed."
ERR_RECEIPT = "event must be one of: delivered, opened."
ERR_MESSAGE_TEXT = "A message of 1 to {limit} characters is required."
ERR_NO_DEVICES = "no_active_devices"
ERR_INTERRUPTED = "interrupted: the sender stopped before FCM answered, and the retries are spent"

MAX_TOKEN_LENGTH = 4096
MAX_MESSAGE_LENGTH = 1000
SUPPORTED_LANGUAGES = ("en", "es")
# A row left in `sending` this long belongs to a sender that died (the task's hard limit is 60 s).
SENDING_LEASE = timedelta(minutes=5)
# A queued row this overdue was never picked up (broker down when it was created): the sweeper sends it.
SWEEP_GRACE = timedelta(seconds=30)
# Retry delays after a transient FCM failure survives the transport's own retries.
REQUEUE_BASE_SECONDS, REQUEUE_CAP_SECONDS = 30.0, 900.0
# The app counts as active (for the stale-sensor rule) if one of its tokens was seen this recently.
APP_ACTIVE_WITHIN = timedelta(hours=24)
READINGS_LOOKBACK = timedelta(hours=2)


class NotificationError(ValueError):
    """A rejected input, with the field it belongs to (views turn it into a field-level 400)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# --- Devices -------------------------------------------------------------------------------


def device_register(
    *, user: User, token: object, platform: object, app_version: object = "", locale: object = "",
) -> tuple[DeviceToken, bool]:
    """Register or refresh a token; idempotent per token. A token moving to another account follows it."""
    if not isinstance(token, str) or not token.strip() or len(token) > MAX_TOKEN_LENGTH:
        raise NotificationError("token", ERR_TOKEN_REQUIRED)
    if platform not in Platform.values:
        raise NotificationError("platform", ERR_PLATFORM)
    for name, value, limit in (("app_version", app_version, 32), ("locale", locale, 16)):
        if value is not None and not isinstance(value, str):
            raise NotificationError(name, ERR_FIELD_TOO_LONG.format(limit=limit))
        if value and len(value) > limit:
            raise NotificationError(name, ERR_FIELD_TOO_LONG.format(limit=limit))
    now = timezone.now()
    device, created = DeviceToken.objects.update_or_create(
        token=token.strip(),
        defaults={
            "user": user, "platform": platform, "app_version": str(app_version or ""), "locale": str(locale or ""),
            "is_active": True, "last_seen_at": now, "deactivated_at": None, "deactivation_reason": "",
        },
    )
    return device, created


def device_remove(*, user: User, token: object) -> bool:
    if not isinstance(token, str) or not token:
        raise NotificationError("token", ERR_TOKEN_REQUIRED)
    deleted, _ = DeviceToken.objects.filter(user=user, token=token).delete()
    return bool(deleted)


def devices_deactivate(*, token_ids: Iterable[int], reason: str) -> int:
    return DeviceToken.objects.filter(pk__in=list(token_ids), is_active=True).update(
        is_active=False, deactivated_at=timezone.now(), deactivation_reason=reason[:64]
    )


# --- Preferences ---------------------------------------------------------------------------


def preference_for(*, patient: Patient) -> Preference:
    return preferences_for(patients=[patient])[patient.pk]


def preferences_for(*, patients: Sequence[Patient]) -> dict[int, Preference]:
    """Each patient's preferences by patient id, created with the defaults where missing.

    One SELECT when all exist; otherwise one INSERT … ON CONFLICT DO NOTHING (a concurrent creator
    wins without an IntegrityError) and one re-read of the missing ones.
    """
    by_id = {patient.pk: patient for patient in patients}
    found = {p.patient_id: p for p in Preference.objects.filter(patient_id__in=list(by_id))}
    missing = [pk for pk in by_id if pk not in found]
    if missing:
        Preference.objects.bulk_create([Preference(patient_id=pk) for pk in missing], ignore_conflicts=True)
        found.update((p.patient_id, p) for p in Preference.objects.filter(patient_id__in=missing))
    for pk, preference in found.items():
        preference.patient = by_id[pk]  # callers read preference.patient (time zone) without another query
    return found


def _parse_time(field: str, value: object) -> time | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise NotificationError(field, ERR_TIME)
    try:
        parsed = time.fromisoformat(value)
    except ValueError:
        raise NotificationError(field, ERR_TIME) from None
    return parsed.replace(second=0, microsecond=0, tzinfo=None)


def _int_in(field: str, value: object, low: int, high: int, message: str | None = None) -> int:
    if type(value) is not int or not low <= value <= high:
        raise NotificationError(field, message or ERR_INTEGER.format(low=low, high=high))
    return value


PATIENT_PREFERENCE_FIELDS = frozenset({
    "quiet_start", "quiet_end", "disabled_kinds", "low_threshold_mgdl", "high_threshold_mgdl",
    "predicted_low_probability", "followers", "escalate_after_minutes", "tips_per_day", "language",
})
BOUND_FIELDS = frozenset({"low_threshold_min", "low_threshold_max", "high_threshold_min", "high_threshold_max"})


@transaction.atomic
def preference_update(*, patient: Patient, changes: dict[str, Any]) -> Preference:
    """Apply a patient's PATCH; every field is checked, nothing is saved unless all are valid."""
    preference = Preference.objects.select_for_update().get(pk=preference_for(patient=patient).pk)
    for name in changes:
        if name not in PATIENT_PREFERENCE_FIELDS:
            raise NotificationError(name, ERR_UNKNOWN_FIELD)
    if "quiet_start" in changes or "quiet_end" in changes:
        start = _parse_time("quiet_start", changes.get("quiet_start", preference.quiet_start and preference.quiet_start.isoformat()))
        end = _parse_time("quiet_end", changes.get("quiet_end", preference.quiet_end and preference.quiet_end.isoformat()))
        if (start is None) != (end is None):
            raise NotificationError("quiet_start", ERR_QUIET_PAIR)
        preference.quiet_start, preference.quiet_end = start, end
    if "disabled_kinds" in changes:
        kinds = changes["disabled_kinds"]
        if (
            not isinstance(kinds, list) or len(kinds) > len(Kind.values)
            or any(k not in Kind.values or k in URGENT_KINDS for k in kinds)
        ):
            raise NotificationError("disabled_kinds", ERR_KINDS)
        preference.disabled_kinds = sorted(set(kinds))
    if "low_threshold_mgdl" in changes:
        preference.low_threshold_mgdl = _int_in(
            "low_threshold_mgdl", changes["low_threshold_mgdl"], preference.low_threshold_min, preference.low_threshold_max,
            ERR_THRESHOLD_BOUNDS.format(low=preference.low_threshold_min, high=preference.low_threshold_max),
        )
    if "high_threshold_mgdl" in changes:
        preference.high_threshold_mgdl = _int_in(
            "high_threshold_mgdl", changes["high_threshold_mgdl"], preference.high_threshold_min, preference.high_threshold_max,
            ERR_THRESHOLD_BOUNDS.format(low=preference.high_threshold_min, high=preference.high_threshold_max),
        )
    if preference.low_threshold_mgdl >= preference.high_threshold_mgdl:
        raise NotificationError("low_threshold_mgdl", ERR_THRESHOLDS_ORDER)
    if "predicted_low_probability" in changes:
        value = changes["predicted_low_probability"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.05 <= value <= 0.95:
            raise NotificationError("predicted_low_probability", ERR_PROBABILITY)
        preference.predicted_low_probability = float(value)
    if "escalate_after_minutes" in changes:
        preference.escalate_after_minutes = _int_in("escalate_after_minutes", changes["escalate_after_minutes"], 5, 120)
    if "tips_per_day" in changes:
        preference.tips_per_day = _int_in("tips_per_day", changes["tips_per_day"], 0, settings.TIPS_MAX_PER_DAY)
    if "language" in changes:
        if changes["language"] not in SUPPORTED_LANGUAGES:
            raise NotificationError("language", ERR_LANGUAGE.format(languages=", ".join(SUPPORTED_LANGUAGES)))
        preference.language = changes["language"]
    preference.save()
    if "followers" in changes:
        followers = changes["followers"]
        if not isinstance(followers, list) or len(followers) > 20 or any(type(f) is not int for f in followers):
            raise NotificationError("followers", ERR_FOLLOWER)
        allowed = set(
            CaregiverLink.objects.filter(patient=patient, revoked_at__isnull=True, caregiver_id__in=followers)
            .values_list("caregiver_id", flat=True)
        )
        if allowed != set(followers):
            raise NotificationError("followers", ERR_FOLLOWER)
        preference.followers.set(followers)
    return preference


@transaction.atomic
def preference_bounds_update(*, patient: Patient, bounds: dict[str, Any]) -> Preference:
    """The care team's bounds for the patient's thresholds; thresholds already outside are pulled inside."""
    from notifications.models import HIGH_THRESHOLD_MAX, HIGH_THRESHOLD_MIN, LOW_THRESHOLD_MAX, LOW_THRESHOLD_MIN

    preference = Preference.objects.select_for_update().get(pk=preference_for(patient=patient).pk)
    for name, value in bounds.items():
        if name not in BOUND_FIELDS:
            raise NotificationError(name, ERR_UNKNOWN_FIELD)
        if name.startswith("low_"):
            _int_in(name, value, LOW_THRESHOLD_MIN, LOW_THRESHOLD_MAX)
        else:
            _int_in(name, value, HIGH_THRESHOLD_MIN, HIGH_THRESHOLD_MAX)
    merged = {name: bounds.get(name, getattr(preference, name)) for name in BOUND_FIELDS}
    if not (
        merged["low_threshold_min"] <= merged["low_threshold_max"]
        and merged["high_threshold_min"] <= merged["high_threshold_max"]
    ):
        raise NotificationError("bounds", ERR_BOUNDS)
    for name, value in merged.items():
        setattr(preference, name, value)
    preference.low_threshold_mgdl = min(max(preference.low_threshold_mgdl, merged["low_threshold_min"]), merged["low_threshold_max"])
    preference.high_threshold_mgdl = min(max(preference.high_threshold_mgdl, merged["high_threshold_min"]), merged["high_threshold_max"])
    preference.save()
    return preference


# --- Quiet hours and limits -----------------------------------------------------------------


def _zone(patient: Patient) -> ZoneInfo:
    return ZoneInfo(patient.time_zone or "UTC")


def in_quiet_hours(*, preference: Preference, local: datetime) -> bool:
    start, end = preference.quiet_start, preference.quiet_end
    if start is None or end is None or start == end:
        return False
    now = local.time().replace(tzinfo=None)
    # A window such as 22:00–07:00 wraps midnight.
    return start <= now < end if start < end else (now >= start or now < end)


def quiet_hours_end(*, preference: Preference, local: datetime) -> datetime:
    """The next local instant quiet hours end, as an aware datetime (DST-safe: built per local date)."""
    assert preference.quiet_end is not None
    zone = local.tzinfo
    for offset in (0, 1):
        day = local.date() + timedelta(days=offset)
        candidate = datetime.combine(day, preference.quiet_end, tzinfo=zone)
        if candidate > local:
            return candidate
    return local + timedelta(days=1)


def _local_day_start(patient: Patient, now: datetime) -> datetime:
    local = now.astimezone(_zone(patient))
    return datetime.combine(local.date(), time(0), tzinfo=local.tzinfo)


UNCAPPED_KINDS = frozenset({Kind.CARE_MESSAGE, Kind.REMINDER})
_COUNTED = [Status.QUEUED, Status.SENDING, Status.SENT, Status.DELIVERED, Status.OPENED, Status.ACKED]


def pushes_today(*, patient: Patient, now: datetime, kinds: Iterable[str] | None = None) -> int:
    query = Notification.objects.filter(
        patient=patient, recipient=patient.user, created_at__gte=_local_day_start(patient, now), status__in=_COUNTED
    ).exclude(kind__in=list(URGENT_KINDS))
    if kinds is not None:
        query = query.filter(kind__in=list(kinds))
    return query.count()


# --- Creating notifications --------------------------------------------------------------------

# Push text without health information: the app fetches the details over the authenticated API.
GENERIC_TEXT: dict[str, tuple[str, str]] = {
    Kind.URGENT_LOW: ("Urgent glucose alert", "Open GlucoScope now."),
    Kind.LOW: ("Glucose alert", "Open GlucoScope for details."),
    Kind.PREDICTED_LOW: ("Glucose alert", "Open GlucoScope for details."),
    Kind.HIGH: ("Glucose alert", "Open GlucoScope for details."),
    Kind.RISING_FAST: ("Glucose alert", "Open GlucoScope for details."),
    Kind.STALE_SENSOR: ("Sensor data", "No recent sensor data. Open GlucoScope."),
    Kind.ESCALATION: ("Urgent alert for someone you follow", "Open GlucoScope now."),
    Kind.REMINDER: ("Reminder", "Open GlucoScope."),
    Kind.TIP: ("A tip for you", "Open GlucoScope."),
    Kind.CARE_MESSAGE: ("Message from your care team", "Open GlucoScope to read it."),
}

DETAILED_TEXT: dict[str, tuple[str, str]] = {
    Kind.URGENT_LOW: ("Urgent low", "Glucose {mgdl:.0f} mg/dL. Treat now."),
    Kind.LOW: ("Low glucose", "Glucose {mgdl:.0f} mg/dL, under {threshold:.0f}."),
    Kind.PREDICTED_LOW: ("Low predicted", "{probability:.0%} chance of going under 70 mg/dL within 30 min."),
    Kind.HIGH: ("High glucose", "Above {threshold:.0f} mg/dL for 30 min (now {mgdl:.0f})."),
    Kind.RISING_FAST: ("Rising fast", "Glucose {mgdl:.0f} mg/dL, rising {mgdl_per_min} mg/dL/min."),
}


def _text(kind: str, details: dict[str, Any], fallback: tuple[str, str] | None = None) -> tuple[str, str]:
    if settings.PUSH_INCLUDE_DETAILS:
        if kind in DETAILED_TEXT:
            title, body = DETAILED_TEXT[kind]
            try:
                return title, body.format(**details)
            except (KeyError, ValueError):
                pass
        if fallback is not None:
            return fallback
    return GENERIC_TEXT[kind]


def _enqueue(ids: Sequence[int]) -> None:
    """Publish after commit; when the broker is down the rows wait for the sweeper."""
    from notifications.tasks import send_notifications

    if not ids:
        return
    try:
        send_notifications.apply_async(args=[list(ids)], retry=False)
    except Exception as exc:  # kombu/redis raise many connection error types
        if settings.CELERY_TASK_ALWAYS_EAGER:
            raise
        logger.warning("Broker unavailable (%s); %d notifications left to the sweeper", exc, len(ids))


def notification_create(
    *,
    patient: Patient,
    recipient: User,
    kind: str,
    details: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
    now: datetime | None = None,
    text: tuple[str, str] | None = None,
    created_by: User | None = None,
    parent: Notification | None = None,
    reminder_id: int | None = None,
    tip_id: str = "",
    defer_in_quiet_hours: bool = False,
) -> Notification | None:
    """Create one notification row, or return None when `dedupe_key` already exists.

    Non-urgent kinds respect the patient's choices, quiet hours (suppressed, or deferred to their end
    for reminders and messages) and the daily cap; urgent kinds are only recorded and sent.
    """
    now = now or timezone.now()
    details = details or {}
    preference = preference_for(patient=patient)
    status, reason, send_after = Status.QUEUED, "", now
    if kind not in URGENT_KINDS:
        local = now.astimezone(_zone(patient))
        if kind in preference.disabled_kinds:
            status, reason = Status.SUPPRESSED, "disabled_by_patient"
        elif in_quiet_hours(preference=preference, local=local):
            if defer_in_quiet_hours:
                send_after = quiet_hours_end(preference=preference, local=local).astimezone(ZoneInfo("UTC"))
            else:
                status, reason = Status.SUPPRESSED, "quiet_hours"
        # The cap is against alert fatigue; reminders the patient scheduled and messages from their team are not capped.
        if status == Status.QUEUED and recipient.pk == patient.user_id and kind not in UNCAPPED_KINDS:
            if pushes_today(patient=patient, now=now) >= settings.PUSH_MAX_PER_PATIENT_PER_DAY:
                status, reason = Status.SUPPRESSED, "daily_cap"
    title, body = _text(kind, details, text) if text is not None or kind in DETAILED_TEXT else GENERIC_TEXT[kind]
    try:
        with transaction.atomic():
            notification = Notification.objects.create(
                patient=patient, recipient=recipient, kind=kind, status=status, reason=reason, title=title, body=body,
                details=details, dedupe_key=dedupe_key, send_after=send_after, created_at=now, created_by=created_by, parent=parent,
                reminder_id=reminder_id, tip_id=tip_id,
            )
    except IntegrityError:
        if dedupe_key and Notification.objects.filter(dedupe_key=dedupe_key).exists():
            return None
        raise
    if status == Status.QUEUED and send_after <= now:
        transaction.on_commit(partial(_enqueue, [notification.pk]))
    return notification


def care_message_send(*, patient: Patient, author: User, text: object) -> Notification:
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_MESSAGE_LENGTH:
        raise NotificationError("text", ERR_MESSAGE_TEXT.format(limit=MAX_MESSAGE_LENGTH))
    with transaction.atomic():
        notification = notification_create(
            patient=patient, recipient=patient.user, kind=Kind.CARE_MESSAGE,
            details={"text": text.strip(), "from": author.get_full_name() or author.username},
            text=("Message from your care team", text.strip()[:200]), created_by=author, defer_in_quiet_hours=True,
        )
    assert notification is not None
    return notification


# --- Delivery ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    requeued: int = 0
    not_configured: int = 0
    tokens_deactivated: int = 0


# The sender's lease on a row in `sending` (PostgreSQL): a session-level advisory lock, keyed by the
# row id in this namespace, taken in the claiming transaction and held by the sender's database
# session until the push is done. A sender killed mid-push (SIGKILL, OOM, a lost machine) loses its
# session and with it the lock, so the task redelivered after it (acks_late) takes the row back at
# once; a row whose sender is alive stays with that sender. SENDING_LEASE and the sweeper remain the
# backstop (and the only path on SQLite).
_SENDER_LOCK_CLASS = 7002
_SENDER_LOCK_KEY = "(k %% 2147483648)::int"  # %% is a literal % in a query with parameters


def _claim(ids: Sequence[int], now: datetime) -> list[int]:
    """queued → sending for due rows, in one conditional UPDATE; only the returned ids may be pushed.

    On PostgreSQL, rows left in `sending` by a sender whose session died are claimed too.
    """
    if not ids:
        return []
    table = Notification._meta.db_table
    if connection.vendor == "postgresql":
        return _claim_with_leases(table, ids, now)
    placeholders = ", ".join(["%s"] * len(ids))
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET status = %s, claimed_at = %s, attempts = attempts + 1"
            f" WHERE id IN ({placeholders}) AND status = %s AND send_after <= %s RETURNING id",
            [Status.SENDING, adapt(now), *ids, Status.QUEUED, adapt(now)],
        )
        return sorted(row[0] for row in cursor.fetchall())


def _claim_with_leases(table: str, ids: Sequence[int], now: datetime) -> list[int]:
    with transaction.atomic(), connection.cursor() as cursor:
        # A `sending` row whose lease lock we can take has no live sender: its session is gone.
        cursor.execute(
            f"WITH stuck AS MATERIALIZED (SELECT id AS k FROM {table} WHERE id = ANY(%s) AND status = %s AND attempts < %s)"
            f" SELECT k FROM stuck WHERE pg_try_advisory_lock(%s, {_SENDER_LOCK_KEY})",
            [list(ids), Status.SENDING, settings.NOTIFICATION_MAX_SEND_ATTEMPTS, _SENDER_LOCK_CLASS],
        )
        orphaned = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            f"UPDATE {table} SET status = %s, claimed_at = %s, attempts = attempts + 1 WHERE id = ANY(%s)"
            " AND ((status = %s AND send_after <= %s) OR (status = %s AND id = ANY(%s))) RETURNING id",
            [Status.SENDING, now, list(ids), Status.QUEUED, now, Status.SENDING, orphaned],
        )
        claimed = sorted(row[0] for row in cursor.fetchall())
        # Leased before the claim commits, so no other sender ever sees these rows in `sending` unleased.
        fresh = sorted(set(claimed) - set(orphaned))
        if fresh:
            cursor.execute(
                f"SELECT pg_try_advisory_lock(%s, {_SENDER_LOCK_KEY}) FROM unnest(%s::bigint[]) AS k",
                [_SENDER_LOCK_CLASS, fresh],
            )
    _release_leases(sorted(set(orphaned) - set(claimed)))
    return claimed


def _release_leases(ids: Sequence[int]) -> None:
    if not ids or connection.vendor != "postgresql":
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT pg_advisory_unlock(%s, {_SENDER_LOCK_KEY}) FROM unnest(%s::bigint[]) AS k",
                [_SENDER_LOCK_CLASS, list(ids)],
            )
    except DatabaseError as exc:  # the session is gone, and its locks with it
        logger.warning("Could not release sender leases (%s); the database dropped them with the session", exc)


def _finish(notification_id: int, **fields: Any) -> None:
    # Conditional on `sending`: only the claimant moves the row on.
    Notification.objects.filter(pk=notification_id, status=Status.SENDING).update(**fields)


def _mark_sent(rows: Sequence[tuple[int, list[int], datetime]]) -> None:
    """sending → sent for many rows, each with its own accepted tokens.

    On PostgreSQL one UPDATE … FROM (VALUES …) per 500 rows: per-row UPDATEs (or the ORM's
    CASE-based bulk_update) cost more than the pushes themselves.
    """
    if connection.vendor != "postgresql":
        for pk, token_ids, sent_at in rows:
            _finish(pk, status=Status.SENT, sent_token_ids=token_ids, sent_at=sent_at, reason="")
        return
    table = Notification._meta.db_table
    for start in range(0, len(rows), 500):
        chunk = rows[start : start + 500]
        values = ", ".join(["(%s::bigint, %s::jsonb, %s::timestamptz)"] * len(chunk))
        params: list[Any] = [value for pk, ids, at in chunk for value in (pk, json.dumps(ids), at)]
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} AS n SET status = %s, reason = '', sent_token_ids = v.ids, sent_at = v.sent_at"
                f" FROM (VALUES {values}) AS v(id, ids, sent_at) WHERE n.id = v.id AND n.status = %s",
                [Status.SENT, *params, Status.SENDING],
            )


def _push_for(notification: Notification, token: DeviceToken) -> PushMessage:
    return PushMessage(
        token=token.token, title=notification.title, body=notification.body,
        data={"notification_id": str(notification.pk), "kind": notification.kind, "patient_id": str(notification.patient_id)},
        collapse_id=f"gs-{notification.pk}", high_priority=notification.kind in URGENT_KINDS or notification.kind in ALERT_KINDS,
    )


def _tip_blocked_by_alert(notification: Notification, now: datetime) -> bool:
    gap = timedelta(minutes=settings.TIP_ALERT_GAP_MINUTES)
    return Notification.objects.filter(
        patient_id=notification.patient_id, kind__in=list(ALERT_KINDS | URGENT_KINDS), created_at__gte=now - gap
    ).exists()


@observe_delivery
def notifications_deliver(
    *, notification_ids: Sequence[int], now: datetime | None = None, transport: FcmTransport | None = None,
) -> DeliveryReport:
    """Claim the due rows among `notification_ids` and push them through FCM in batches of ≤500."""
    now = now or timezone.now()
    claimed = _claim(list(notification_ids), now)
    if not claimed:
        return DeliveryReport()
    try:
        return _push_claimed(claimed, now=now, transport=transport)
    finally:
        _release_leases(claimed)


def _push_claimed(claimed: list[int], *, now: datetime, transport: FcmTransport | None) -> DeliveryReport:
    transport = transport or transport_from_settings()
    notifications = list(Notification.objects.filter(pk__in=claimed))
    if not transport.configured:
        Notification.objects.filter(pk__in=claimed, status=Status.SENDING).update(
            status=Status.NOT_CONFIGURED, reason="FCM credentials are not configured"
        )
        return DeliveryReport(claimed=len(claimed), not_configured=len(claimed))
    tokens_by_user: dict[int, list[DeviceToken]] = defaultdict(list)
    for token in DeviceToken.objects.filter(user_id__in={n.recipient_id for n in notifications}, is_active=True):
        tokens_by_user[token.user_id].append(token)
    messages: list[PushMessage] = []
    targets: list[tuple[Notification, DeviceToken]] = []
    failed = 0
    for notification in notifications:
        if notification.kind == Kind.TIP and _tip_blocked_by_alert(notification, now):
            _finish(notification.pk, status=Status.SUPPRESSED, reason="near_alert")
            continue
        already = set(notification.sent_token_ids)
        pending = [t for t in tokens_by_user.get(notification.recipient_id, []) if t.pk not in already]
        if not pending:
            if already:
                _finish(notification.pk, status=Status.SENT, sent_at=notification.sent_at or now)
            else:
                _finish(notification.pk, status=Status.FAILED, reason=ERR_NO_DEVICES)
                failed += 1
            continue
        for token in pending:
            messages.append(_push_for(notification, token))
            targets.append((notification, token))
    outcomes = transport.send(messages) if messages else []
    by_notification: dict[int, list[tuple[DeviceToken, Any]]] = defaultdict(list)
    dead: dict[str, list[int]] = defaultdict(list)
    for (notification, token), outcome in zip(targets, outcomes, strict=True):
        by_notification[notification.pk].append((token, outcome))
        if outcome.deactivate_token:
            dead[outcome.error_code].append(token.pk)
    deactivated = sum(devices_deactivate(token_ids=ids, reason=code) for code, ids in dead.items())
    sent = requeued = 0
    max_attempts = settings.NOTIFICATION_MAX_SEND_ATTEMPTS
    sent_rows: list[tuple[int, list[int], datetime]] = []
    failed_rows: dict[str, list[int]] = defaultdict(list)
    for notification in notifications:
        results = by_notification.get(notification.pk)
        if not results:
            continue
        ok_tokens = [token.pk for token, outcome in results if outcome.ok]
        sent_token_ids = sorted(set(notification.sent_token_ids) | set(ok_tokens))
        transient = [outcome for _, outcome in results if outcome.transient]
        if transient and notification.attempts < max_attempts:
            delay = backoff_delay(notification.attempts, base=REQUEUE_BASE_SECONDS, cap=REQUEUE_CAP_SECONDS)
            _finish(
                notification.pk, status=Status.QUEUED, sent_token_ids=sent_token_ids,
                send_after=now + timedelta(seconds=max(delay, 1.0)), reason=f"retrying: {transient[0].error_code}",
                sent_at=now if ok_tokens and not notification.sent_at else notification.sent_at,
            )
            requeued += 1
        elif sent_token_ids:
            sent_rows.append((notification.pk, sent_token_ids, notification.sent_at or now))
        else:
            first = next(outcome for _, outcome in results if not outcome.ok)
            failed_rows[f"{first.error_code}: {first.error}"[:200]].append(notification.pk)
    _mark_sent(sent_rows)
    for reason, ids in failed_rows.items():
        Notification.objects.filter(pk__in=ids, status=Status.SENDING).update(status=Status.FAILED, reason=reason)
    sent = len(sent_rows)
    failed += sum(len(ids) for ids in failed_rows.values())
    return DeliveryReport(
        claimed=len(claimed), sent=sent, failed=failed, requeued=requeued, tokens_deactivated=deactivated
    )


def notifications_sweep(*, now: datetime | None = None) -> list[int]:
    """Re-send work that never ran: overdue queued rows, and rows whose sender died mid-send.

    A row stuck in `sending` past the lease may or may not have reached FCM; it is sent again
    (the push carries the notification id as its collapse key, so the phone replaces rather than
    duplicates it) until the attempts run out.
    """
    now = now or timezone.now()
    stuck = Notification.objects.filter(status=Status.SENDING, claimed_at__lt=now - SENDING_LEASE)
    stuck.filter(attempts__gte=settings.NOTIFICATION_MAX_SEND_ATTEMPTS).update(status=Status.FAILED, reason=ERR_INTERRUPTED)
    stuck.update(status=Status.QUEUED, send_after=now)
    due = list(
        Notification.objects.filter(status=Status.QUEUED, send_after__lte=now)
        # Fresh rows were published on commit; deferred ones (quiet hours, retry backoff) were not.
        .filter(Q(created_at__lt=now - SWEEP_GRACE) | Q(send_after__gt=F("created_at") + SWEEP_GRACE))
        .order_by("send_after").values_list("pk", flat=True)[:5000]
    )
    for start in range(0, len(due), 500):
        _enqueue(due[start : start + 500])
    return due


# --- App receipts, acknowledgement, feedback -------------------------------------------------

_RANK = {Status.DELIVERED: 1, Status.OPENED: 2, Status.ACKED: 3}


def notification_receipt(*, notification: Notification, event: object, now: datetime | None = None) -> Notification:
    """The app reports `delivered` or `opened`; statuses only move forward."""
    now = now or timezone.now()
    if event not in ("delivered", "opened"):
        raise NotificationError("event", ERR_RECEIPT)
    field = "delivered_at" if event == "delivered" else "opened_at"
    Notification.objects.filter(pk=notification.pk, **{f"{field}__isnull": True}).update(**{field: now})
    _advance_status(notification.pk, Status(event))
    if event == "opened":
        _tip_reward(notification.pk, 1.0, only_if_unset=True)
    notification.refresh_from_db()
    return notification


def _advance_status(notification_id: int, status: Status) -> None:
    lower = [s for s, rank in _RANK.items() if rank < _RANK[status]]
    movable = [Status.SENT, Status.NOT_CONFIGURED, *lower]
    if status == Status.ACKED:
        # Seen in the app's inbox before (or without) the push: an acknowledged row is never pushed after.
        movable += [Status.QUEUED, Status.SENDING, Status.FAILED]
    Notification.objects.filter(pk=notification_id, status__in=movable).update(status=status)


def notification_ack(*, notification: Notification, now: datetime | None = None) -> Notification:
    now = now or timezone.now()
    Notification.objects.filter(pk=notification.pk, acked_at__isnull=True).update(acked_at=now)
    _advance_status(notification.pk, Status.ACKED)
    if notification.parent_id:
        # A follower acknowledging an escalation acknowledges the alert for everyone.
        Notification.objects.filter(pk=notification.parent_id, acked_at__isnull=True).update(acked_at=now)
    notification.refresh_from_db()
    return notification


FEEDBACK_REWARD = {Feedback.HELPFUL: 1.0, Feedback.NOT_HELPFUL: 0.0, Feedback.DISMISSED: 0.0}


def notification_feedback(*, notification: Notification, feedback: object, now: datetime | None = None) -> Notification:
    now = now or timezone.now()
    if feedback not in Feedback.values:
        raise NotificationError("feedback", ERR_FEEDBACK)
    Notification.objects.filter(pk=notification.pk).update(feedback=feedback, feedback_at=now)
    _tip_reward(notification.pk, FEEDBACK_REWARD[Feedback(feedback)], only_if_unset=False)
    notification.refresh_from_db()
    return notification


def _tip_reward(notification_id: int, reward: float, *, only_if_unset: bool) -> None:
    query = TipEngagement.objects.filter(notification_id=notification_id)
    if only_if_unset:
        query = query.filter(reward__isnull=True)
    query.update(reward=reward)


# --- Alert rules: episodes, dedupe, cooldowns ------------------------------------------------

# Patients loaded per round of queries: bounds the rows held at once (the stale-sensor sweep passes
# thousands of ids; a forecasting task at most 100).
ALERT_BATCH_SIZE = 200


@dataclass(frozen=True, slots=True)
class _AlertInputs:
    """What the rules need for a batch of patients, loaded in a fixed number of queries."""

    preferences: dict[int, Preference]
    readings: dict[int, list[rules.Reading]]  # by patient id, oldest first
    risks: dict[int, tuple[float, int | None]]  # by patient id: P(<70 in 30 min), its predicted_low event id
    app_active_users: set[int]
    open_episodes: dict[int, dict[str, AlertEpisode]]  # by patient id, then kind


def patients_evaluate_alerts(*, patient_ids: Sequence[int], now: datetime | None = None) -> list[int]:
    """Run the alert rules for these patients; returns the ids of the notifications created."""
    now = now or timezone.now()
    ids = list(dict.fromkeys(patient_ids))
    created: list[int] = []
    for start in range(0, len(ids), ALERT_BATCH_SIZE):
        patients = list(
            Patient.objects.filter(pk__in=ids[start : start + ALERT_BATCH_SIZE]).select_related("user").order_by("pk")
        )
        created.extend(_evaluate_batch(patients, now))
    return created


def patient_evaluate_alerts(*, patient: Patient, now: datetime) -> list[int]:
    return _evaluate_batch([patient], now)


def _evaluate_batch(patients: Sequence[Patient], now: datetime) -> list[int]:
    """One alert per episode: open an episode when a condition starts, alert unless in cooldown, close it when it stops.

    Episodes still active get their last_seen_at and ended ones their ended_at in one UPDATE each for
    the whole batch; opening an episode (rare) stays one row at a time, because the unique open
    episode per patient and kind is what tells two concurrent evaluations which one alerts.
    """
    if not patients:
        return []
    inputs = _alert_inputs(patients, now)
    seen: list[int] = []
    ended: list[int] = []
    starting: list[tuple[Patient, rules.Conditions, list[str]]] = []
    for patient in patients:
        conditions = _conditions(patient, inputs, now)
        open_episodes = inputs.open_episodes.get(patient.pk, {})
        kinds: list[str] = []
        for kind in rules.DEFAULT_COOLDOWN_MINUTES:
            episode = open_episodes.get(kind)
            if kind not in conditions.active:
                if episode is not None:
                    ended.append(episode.pk)
            elif episode is not None:
                seen.append(episode.pk)
            else:
                kinds.append(kind)
        if kinds:
            starting.append((patient, conditions, kinds))
    if ended:
        # Conditional: an episode a concurrent evaluation already closed keeps its own ended_at.
        AlertEpisode.objects.filter(pk__in=ended, ended_at__isnull=True).update(ended_at=now)
    if seen:
        AlertEpisode.objects.filter(pk__in=seen).update(last_seen_at=now)
    created: list[int] = []
    for patient, conditions, kinds in starting:
        created.extend(_open_episodes(patient, conditions, kinds, now))
    return created


def _alert_inputs(patients: Sequence[Patient], now: datetime) -> _AlertInputs:
    from forecasting.models import ForecastEvent, RiskAssessment
    from glucoscope.readings.models import GlucoseReading, SensorFlag

    ids = [patient.pk for patient in patients]
    preferences = preferences_for(patients=patients)
    readings: dict[int, list[rules.Reading]] = defaultdict(list)
    for patient_id, measured_at, value, flag in (
        GlucoseReading.objects.filter(
            patient_id__in=ids, measured_at__gt=now - READINGS_LOOKBACK, measured_at__lte=now, is_calibration=False
        ).order_by("patient_id", "measured_at").values_list("patient_id", "measured_at", "value_mgdl", "sensor_flag")
    ):
        if flag == SensorFlag.LOW:
            value = rules.SENSOR_LOW_MGDL
        elif flag == SensorFlag.HIGH:
            value = rules.SENSOR_HIGH_MGDL
        if value is not None:
            readings[patient_id].append(rules.Reading(measured_at, float(value)))
    # The latest recent forecast per patient is picked in the database (LIMIT 1 per patient): a patient
    # posting every few seconds has many forecasts in the window. Its predicted_low event comes along.
    latest_forecast = (
        RiskAssessment.objects.filter(forecast__patient_id=OuterRef("pk"), forecast__origin__gte=now - rules.RECENT)
        .order_by("-forecast__origin").values("forecast_id")[:1]
    )
    event = ForecastEvent.objects.filter(
        forecast_id=OuterRef("forecast_id"), kind=ForecastEvent.Kind.PREDICTED_LOW
    ).values("pk")[:1]
    risks = {
        patient_id: (float(probability), event_id)
        for patient_id, probability, event_id in (
            RiskAssessment.objects.filter(
                forecast_id__in=Patient.objects.filter(pk__in=ids).values(latest=Subquery(latest_forecast))
            ).annotate(event_id=Subquery(event)).values_list("forecast__patient_id", "below_70_30min", "event_id")
        )
    }
    app_active_users = set(
        DeviceToken.objects.filter(
            user_id__in=[patient.user_id for patient in patients], is_active=True, last_seen_at__gte=now - APP_ACTIVE_WITHIN
        ).values_list("user_id", flat=True).distinct()
    )
    open_episodes: dict[int, dict[str, AlertEpisode]] = defaultdict(dict)
    for episode in AlertEpisode.objects.filter(patient_id__in=ids, ended_at__isnull=True):
        open_episodes[episode.patient_id][episode.kind] = episode
    return _AlertInputs(
        preferences=preferences, readings=readings, risks=risks, app_active_users=app_active_users,
        open_episodes=open_episodes,
    )


def _conditions(patient: Patient, inputs: _AlertInputs, now: datetime) -> rules.Conditions:
    preference = inputs.preferences[patient.pk]
    probability, event_id = inputs.risks.get(patient.pk, (None, None))
    conditions = rules.evaluate(
        readings=inputs.readings.get(patient.pk, []), now=now, app_active=patient.user_id in inputs.app_active_users,
        predicted_low_probability=probability,
        thresholds=rules.thresholds_from_settings(
            low_mgdl=preference.low_threshold_mgdl, high_mgdl=preference.high_threshold_mgdl,
            predicted_low_probability=preference.predicted_low_probability,
        ),
    )
    if event_id is not None and "predicted_low" in conditions.details:
        conditions.details["predicted_low"]["forecast_event_id"] = event_id
    return conditions


def _open_episodes(patient: Patient, conditions: rules.Conditions, kinds: Sequence[str], now: datetime) -> list[int]:
    """Open an episode per starting kind and alert for it, unless superseded or in cooldown."""
    created: list[int] = []
    for kind in kinds:
        try:
            with transaction.atomic():
                episode = AlertEpisode.objects.create(patient=patient, kind=kind, started_at=now, last_seen_at=now)
        except IntegrityError:
            continue  # a concurrent evaluation opened it and owns the alert
        if any(kind in rules.SUPERSEDES.get(other, ()) for other in conditions.active):
            continue
        recent = Notification.objects.filter(
            patient=patient, recipient=patient.user, kind=kind, created_at__gt=now - rules.cooldown(kind)
        ).exclude(status=Status.SUPPRESSED).exists()
        if recent:
            continue
        notification = notification_create(
            patient=patient, recipient=patient.user, kind=kind, details=conditions.details.get(kind, {}),
            dedupe_key=f"{kind}:{patient.pk}:{episode.pk}", now=now,
        )
        if notification is not None:
            AlertEpisode.objects.filter(pk=episode.pk).update(notification=notification)
            created.append(notification.pk)
    return created


def patients_after_forecast(*, patient_ids: Sequence[int]) -> list[int]:
    """The notifications stage after forecasting (forecasting.tasks.forecast_patients calls it)."""
    return patients_evaluate_alerts(patient_ids=patient_ids)


def patients_with_stale_sensor(*, now: datetime | None = None) -> list[int]:
    """Patients whose app is active but whose last reading is older than the stale limit (no ingest to trigger them)."""
    from glucoscope.readings.models import PatientSummary

    now = now or timezone.now()
    active_users = DeviceToken.objects.filter(is_active=True, last_seen_at__gte=now - APP_ACTIVE_WITHIN).values("user_id")
    stale_before = now - timedelta(minutes=float(getattr(settings, "ALERT_STALE_MINUTES", 30)))
    return list(
        PatientSummary.objects.filter(
            latest_reading__measured_at__lt=stale_before, latest_reading__measured_at__gt=now - timedelta(hours=12),
            patient__user_id__in=active_users,
        ).values_list("patient_id", flat=True)[:10_000]
    )


# --- Escalation ------------------------------------------------------------------------------


def escalations_due(*, now: datetime | None = None) -> list[int]:
    """Urgent lows not acknowledged in time go to the patient's followers and are flagged to the care team."""
    now = now or timezone.now()
    candidates = Notification.objects.filter(
        kind=Kind.URGENT_LOW, acked_at__isnull=True, escalated_at__isnull=True,
        created_at__lte=now - timedelta(minutes=5), created_at__gte=now - timedelta(hours=6),
    ).select_related("patient__user")
    created: list[int] = []
    for alert in candidates:
        preference = preference_for(patient=alert.patient)
        if alert.created_at > now - timedelta(minutes=preference.escalate_after_minutes):
            continue
        # Claim: exactly one sweeper escalates each alert.
        if not Notification.objects.filter(pk=alert.pk, escalated_at__isnull=True, acked_at__isnull=True).update(
            escalated_at=now, flagged_to_care_team_at=now
        ):
            continue
        active_followers = User.objects.filter(
            pk__in=preference.followers.values("pk"), role=Role.CAREGIVER,
            caregiver_links__patient=alert.patient, caregiver_links__revoked_at__isnull=True,
        ).distinct()
        for follower in active_followers:
            escalation = notification_create(
                patient=alert.patient, recipient=follower, kind=Kind.ESCALATION, parent=alert, now=now,
                details={**alert.details, "patient_name": alert.patient.user.get_full_name() or alert.patient.user.username},
                dedupe_key=f"escalation:{alert.pk}:{follower.pk}",
            )
            if escalation is not None:
                created.append(escalation.pk)
    return created

