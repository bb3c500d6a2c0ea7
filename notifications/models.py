"""Push notifications: device tokens, notification rows, preferences, reminders, tips and engagement.

Every notification is a row before anything is sent (GUIDE.md §4): the row is claimed with a
conditional UPDATE (queued → sending) and only the claimant talks to FCM, so a redelivered
task never pushes twice. Rules and delivery live in services.py and rules.py; these models
only hold the facts.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from glucoscope.patients.models import Patient

# Alert thresholds a patient may choose, within the care team's bounds (mg/dL). The outer limits
# keep a typo from disabling alerts: a low threshold under 54 would sit inside the urgent band
# (Battelino et al., Diabetes Care 2019, level 2 hypoglycaemia <54).
LOW_THRESHOLD_MIN, LOW_THRESHOLD_MAX = 55, 100
HIGH_THRESHOLD_MIN, HIGH_THRESHOLD_MAX = 150, 400


class Platform(models.TextChoices):
    ANDROID = "android"
    IOS = "ios"
    WEB = "web"


class DeviceToken(models.Model):
    """An FCM registration token of one app install; belongs to a person (patient or follower)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="device_tokens")
    token = models.CharField(max_length=4096, unique=True)
    platform = models.CharField(max_length=8, choices=Platform.choices)
    app_version = models.CharField(max_length=32, blank=True, default="")
    locale = models.CharField(max_length=16, blank=True, default="")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField()
    deactivated_at = models.DateTimeField(null=True, blank=True)
    deactivation_reason = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        indexes = [models.Index(fields=["user", "is_active"], name="devicetoken_user_active")]

    def __str__(self) -> str:
        return f"{self.platform} token …{self.token[-8:]} ({'active' if self.is_active else 'inactive'})"


class Kind(models.TextChoices):
    URGENT_LOW = "urgent_low", "Urgent low"
    LOW = "low", "Low"
    PREDICTED_LOW = "predicted_low", "Predicted low"
    HIGH = "high", "High (sustained)"
    RISING_FAST = "rising_fast", "Rising fast"
    STALE_SENSOR = "stale_sensor", "No sensor data"
    ESCALATION = "escalation", "Escalation to a follower"
    REMINDER = "reminder", "Reminder"
    TIP = "tip", "Diet tip"
    CARE_MESSAGE = "care_message", "Message from the care team"


ALERT_KINDS = frozenset({Kind.URGENT_LOW, Kind.LOW, Kind.PREDICTED_LOW, Kind.HIGH, Kind.RISING_FAST, Kind.STALE_SENSOR})
# These break through quiet hours and the daily cap: missing them can harm.
URGENT_KINDS = frozenset({Kind.URGENT_LOW, Kind.ESCALATION})


class Status(models.TextChoices):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    NOT_CONFIGURED = "not_configured"
    SUPPRESSED = "suppressed"
    DELIVERED = "delivered"
    OPENED = "opened"
    ACKED = "acked"


class Feedback(models.TextChoices):
    HELPFUL = "helpful"
    NOT_HELPFUL = "not_helpful"
    DISMISSED = "dismissed"


class Notification(models.Model):
    """One push to one person about one patient. `dedupe_key` makes creation idempotent."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="notifications")
    recipient = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    reason = models.CharField(max_length=200, blank=True, default="", help_text="Why it failed or was suppressed.")
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True, default="")
    # Details the app fetches over the authenticated API; never in the push unless PUSH_INCLUDE_DETAILS.
    details = models.JSONField(default=dict, blank=True)
    dedupe_key = models.CharField(max_length=200, unique=True, null=True, blank=True)
    parent = models.ForeignKey("self", on_delete=models.CASCADE, null=True, blank=True, related_name="escalations")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    reminder = models.ForeignKey("Reminder", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    tip_id = models.CharField(max_length=64, blank=True, default="")
    # Set by the service to its `now`, so rules replayed for a past instant judge cooldowns consistently.
    created_at = models.DateTimeField(default=timezone.now)
    send_after = models.DateTimeField(help_text="Not sent before this instant (quiet hours, retry backoff).")
    attempts = models.PositiveSmallIntegerField(default=0)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    # Tokens FCM already accepted this notification for, so a retry only sends to the others.
    sent_token_ids = models.JSONField(default=list, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    acked_at = models.DateTimeField(null=True, blank=True)
    feedback = models.CharField(max_length=16, choices=Feedback.choices, blank=True, default="")
    feedback_at = models.DateTimeField(null=True, blank=True)
    escalated_at = models.DateTimeField(null=True, blank=True)
    flagged_to_care_team_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["status", "send_after"], name="notification_due"),
            models.Index(fields=["patient", "-created_at"], name="notification_patient_time"),
            models.Index(fields=["recipient", "-created_at"], name="notification_recipient_time"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} → {self.recipient_id} ({self.status})"


class AlertEpisode(models.Model):
    """One glucose episode per patient and alert kind: the unit of dedupe (one alert per episode)."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="alert_episodes")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    notification = models.ForeignKey(Notification, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "kind"], condition=Q(ended_at__isnull=True), name="alert_episode_one_open"
            ),
        ]


class Preference(models.Model):
    """A patient's notification settings. Thresholds must sit inside the bounds the care team sets."""

    patient = models.OneToOneField(Patient, on_delete=models.CASCADE, related_name="notification_preference")
    quiet_start = models.TimeField(null=True, blank=True, help_text="Local time in the patient's zone.")
    quiet_end = models.TimeField(null=True, blank=True)
    # Empty means every kind; urgent kinds cannot be switched off.
    disabled_kinds = models.JSONField(default=list, blank=True)
    low_threshold_mgdl = models.PositiveSmallIntegerField(
        default=70, validators=[MinValueValidator(LOW_THRESHOLD_MIN), MaxValueValidator(LOW_THRESHOLD_MAX)]
    )
    high_threshold_mgdl = models.PositiveSmallIntegerField(
        default=250, validators=[MinValueValidator(HIGH_THRESHOLD_MIN), MaxValueValidator(HIGH_THRESHOLD_MAX)]
    )
    predicted_low_probability = models.FloatField(
        default=0.5, validators=[MinValueValidator(0.05), MaxValueValidator(0.95)]
    )
    # Set by the care team (or the defaults): the range the patient may move each threshold in.
    low_threshold_min = models.PositiveSmallIntegerField(default=65)
    low_threshold_max = models.PositiveSmallIntegerField(default=90)
    high_threshold_min = models.PositiveSmallIntegerField(default=180)
    high_threshold_max = models.PositiveSmallIntegerField(default=300)
    followers = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="+")
    escalate_after_minutes = models.PositiveSmallIntegerField(
        default=15, validators=[MinValueValidator(5), MaxValueValidator(120)]
    )
    tips_per_day = models.PositiveSmallIntegerField(default=1, validators=[MaxValueValidator(5)])
    language = models.CharField(max_length=8, default="en")
    updated_at = models.DateTimeField(auto_now=True)


class ReminderKind(models.TextChoices):
    MEDICATION = "medication"
    INSULIN = "insulin"
    GLUCOSE_CHECK = "glucose_check"
    MEAL_LOG = "meal_log"
    SENSOR_CHANGE = "sensor_change"


class Reminder(models.Model):
    """A schedule in the patient's local time: daily at `local_time` on `weekdays`, or every N days."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="reminders")
    kind = models.CharField(max_length=16, choices=ReminderKind.choices)
    label = models.CharField(max_length=120, blank=True, default="")
    local_time = models.TimeField()
    # ISO weekdays 1 (Monday) … 7 (Sunday); ignored when every_n_days is set.
    weekdays = models.JSONField(default=list, blank=True)
    every_n_days = models.PositiveSmallIntegerField(null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(90)])
    start_date = models.DateField()
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # Deleting keeps the row (the care team sees what was scheduled, and by whom); it never fires again.
    deleted_at = models.DateTimeField(null=True, blank=True)
    # The next UTC instant it fires; beat selects due rows by index and advances this field.
    next_fire_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.kind} reminder for patient {self.patient_id} at {self.local_time}"


class Tip(models.Model):
    """A diet tip from the library (notifications/tips/*.json), editable in the admin."""

    tip_id = models.CharField(max_length=64, unique=True)
    category = models.CharField(max_length=32)
    # Patterns (see notifications/patterns.py) under which the tip is relevant; empty = any.
    patterns = models.JSONField(default=list, blank=True)
    texts = models.JSONField(default=dict, help_text='{"en": "...", "es": "..."}')
    is_active = models.BooleanField(default=True)

    def __str__(self) -> str:
        return f"{self.tip_id} ({self.category})"


class TipEngagement(models.Model):
    """One tip shown to a patient and what they did with it: the bandit's reward signal."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="tip_engagements")
    notification = models.OneToOneField(Notification, on_delete=models.CASCADE, related_name="tip_engagement")
    tip = models.ForeignKey(Tip, on_delete=models.CASCADE, related_name="+")
    category = models.CharField(max_length=32)
    context = models.CharField(max_length=32, help_text="The pattern the tip was chosen for.")
    shown_at = models.DateTimeField()
    # None until the patient responds; 1 for opened/helpful, 0 for dismissed/not helpful.
    reward = models.FloatField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["patient", "context", "category"], name="tipengagement_arm")]
