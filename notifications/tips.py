"""Personalised diet tips: the library (data files → Tip rows), choosing a tip, and sending them.

A tip is chosen in three steps:
1. patterns.detect() on the patient's last 14 days names the context (e.g. "dinner_spike");
2. the patient's Thompson sampler (bandit.py), built from their TipEngagement rewards, picks a
   category among those with tips for that context;
3. within the category, the tip shown longest ago (never shown first) is sent.

Limits: at most `tips_per_day` a day (capped by TIPS_MAX_PER_DAY), only in the local daytime
slots below, never in quiet hours, and never within TIP_ALERT_GAP_MINUTES of an alert (checked
when the tip is created and again when it is sent).
"""

from __future__ import annotations

import json
import random
from datetime import datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from glucoscope.patients.models import Patient
from notifications import bandit, patterns
from notifications.models import ALERT_KINDS, URGENT_KINDS, Kind, Notification, Tip, TipEngagement
from notifications.services import in_quiet_hours, notification_create, preference_for, pushes_today

TIPS_DIR = Path(__file__).resolve().parent / "tips"
# Local hours from which the 1st, 2nd, … tip of the day may go out; nothing after the last hour.
TIP_SLOTS = (time(10, 0), time(16, 0), time(13, 0), time(19, 0), time(11, 30))
TIP_LATEST = time(20, 30)
REPEAT_AFTER = timedelta(days=14)


def library_from_files(directory: Path = TIPS_DIR) -> list[dict[str, object]]:
    """The tips in the data files, each with its texts in every language file present."""
    library = json.loads((directory / "library.json").read_text())
    texts = {path.stem: json.loads(path.read_text()) for path in sorted(directory.glob("*.json")) if path.stem != "library"}
    return [
        {"tip_id": tip["id"], "category": tip["category"], "patterns": tip["patterns"],
         "texts": {language: strings[tip["id"]] for language, strings in texts.items() if tip["id"] in strings}}
        for tip in library["tips"]
    ]


def tips_sync_from_files(*, overwrite: bool = False) -> int:
    """Create tips missing from the database; with overwrite, files win over admin edits."""
    count = 0
    for entry in library_from_files():
        defaults = {k: entry[k] for k in ("category", "patterns", "texts")}
        if overwrite:
            Tip.objects.update_or_create(tip_id=entry["tip_id"], defaults=defaults)
            count += 1
        elif not Tip.objects.filter(tip_id=entry["tip_id"]).exists():
            Tip.objects.create(tip_id=str(entry["tip_id"]), **defaults)
            count += 1
    return count


def patient_patterns(*, patient: Patient, now: datetime) -> list[str]:
    from glucoscope.readings.models import GlucoseReading, SensorFlag, Treatment, TreatmentKind

    zone = ZoneInfo(patient.time_zone)
    rows = GlucoseReading.objects.filter(
        patient=patient, measured_at__gt=now - patterns.LOOKBACK, measured_at__lte=now,
        sensor_flag=SensorFlag.NONE, is_calibration=False,
    ).order_by("measured_at").values_list("measured_at", "value_mgdl")
    times = [m.astimezone(zone).replace(tzinfo=None) for m, v in rows if v is not None]
    values = [float(v) for _, v in rows if v is not None]
    meals = [
        patterns.Meal(at.astimezone(zone).replace(tzinfo=None))
        for at in Treatment.objects.filter(
            patient=patient, kind=TreatmentKind.CARBS, occurred_at__gt=now - patterns.LOOKBACK
        ).values_list("occurred_at", flat=True)
    ]
    return patterns.detect(times, values, meals)


def tip_choose(*, patient: Patient, now: datetime, rng: random.Random | None = None) -> tuple[Tip, str] | None:
    """The tip to show and the context it was chosen for, or None when the library is empty."""
    rng = rng or random.Random()
    if not Tip.objects.exists():
        tips_sync_from_files()
    found = patient_patterns(patient=patient, now=now)
    context = found[0] if found else patterns.GENERAL
    tips = list(Tip.objects.filter(is_active=True))
    # Tips written for the pattern first; general ones (no patterns) only when none is. Without a
    # pattern every tip is a candidate and the bandit alone learns what this patient likes.
    eligible = tips if context == patterns.GENERAL else (
        [t for t in tips if context in t.patterns] or [t for t in tips if not t.patterns] or tips
    )
    if not eligible:
        return None
    history = TipEngagement.objects.filter(patient=patient, reward__isnull=False).values_list("context", "category", "reward")
    sampler = bandit.ThompsonSampler.from_history((c, k, float(r or 0.0)) for c, k, r in history)
    category = sampler.choose(context=context, categories=sorted({t.category for t in eligible}), rng=rng)
    last_shown = dict(
        # Ordered by time, so the dict keeps each tip's latest showing.
        TipEngagement.objects.filter(patient=patient).order_by("shown_at").values_list("tip_id", "shown_at")
    )
    candidates = [t for t in eligible if t.category == category]
    fresh = [t for t in candidates if t.pk not in last_shown or last_shown[t.pk] < now - REPEAT_AFTER] or candidates
    tip = min(fresh, key=lambda t: (last_shown.get(t.pk, datetime.min.replace(tzinfo=ZoneInfo("UTC"))), t.tip_id))
    return tip, context


def _tip_allowed_now(patient: Patient, now: datetime) -> bool:
    preference = preference_for(patient=patient)
    per_day = min(preference.tips_per_day, settings.TIPS_MAX_PER_DAY)
    if per_day <= 0 or Kind.TIP in preference.disabled_kinds:
        return False
    local = now.astimezone(ZoneInfo(patient.time_zone))
    if in_quiet_hours(preference=preference, local=local) or local.time() > TIP_LATEST:
        return False
    sent_today = pushes_today(patient=patient, now=now, kinds=[Kind.TIP])
    if sent_today >= per_day or local.time() < sorted(TIP_SLOTS[:per_day])[sent_today]:
        return False
    gap = timedelta(minutes=settings.TIP_ALERT_GAP_MINUTES)
    return not Notification.objects.filter(
        patient=patient, kind__in=list(ALERT_KINDS | URGENT_KINDS), created_at__gte=now - gap
    ).exists()


def tip_send(*, patient: Patient, now: datetime | None = None, rng: random.Random | None = None) -> Notification | None:
    """Send the patient their next tip if the limits allow it now."""
    now = now or timezone.now()
    if not _tip_allowed_now(patient, now):
        return None
    choice = tip_choose(patient=patient, now=now, rng=rng)
    if choice is None:
        return None
    tip, context = choice
    preference = preference_for(patient=patient)
    text = tip.texts.get(preference.language) or tip.texts.get("en", "")
    local_day = now.astimezone(ZoneInfo(patient.time_zone)).date()
    ordinal = pushes_today(patient=patient, now=now, kinds=[Kind.TIP])
    with transaction.atomic():
        notification = notification_create(
            patient=patient, recipient=patient.user, kind=Kind.TIP, now=now, tip_id=tip.tip_id,
            details={"tip_id": tip.tip_id, "category": tip.category, "context": context, "text": text},
            text=("A tip for you", text[:200]), dedupe_key=f"tip:{patient.pk}:{local_day.isoformat()}:{ordinal}",
        )
        if notification is None:
            return None
        TipEngagement.objects.create(
            patient=patient, notification=notification, tip=tip, category=tip.category, context=context, shown_at=now
        )
    return notification


def tips_send_due(*, now: datetime | None = None) -> list[int]:
    """Beat: tips for patients whose app is active (a token seen in the last 3 days)."""
    from notifications.models import DeviceToken

    now = now or timezone.now()
    users = DeviceToken.objects.filter(is_active=True, last_seen_at__gte=now - timedelta(days=3)).values("user_id")
    sent = []
    for patient in Patient.objects.filter(user_id__in=users).select_related("user")[:10_000]:
        notification = tip_send(patient=patient, now=now)
        if notification is not None:
            sent.append(notification.pk)
    return sent
