"""Glucose readings, treatments, Nightscout documents, and the processing outbox."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Coalesce

from glucoscope.patients.models import Device, Patient

# The range a CGM can report as a number (GUIDE.md §5); outside it sensors say "Low"/"High".
MIN_GLUCOSE_MGDL = 20.0
MAX_GLUCOSE_MGDL = 600.0


class Direction(models.TextChoices):
    """Nightscout trend arrows (GUIDE.md §6), in Nightscout's own spelling."""

    NONE = "NONE"
    TRIPLE_UP = "TripleUp"
    DOUBLE_UP = "DoubleUp"
    SINGLE_UP = "SingleUp"
    FORTY_FIVE_UP = "FortyFiveUp"
    FLAT = "Flat"
    FORTY_FIVE_DOWN = "FortyFiveDown"
    SINGLE_DOWN = "SingleDown"
    DOUBLE_DOWN = "DoubleDown"
    TRIPLE_DOWN = "TripleDown"
    NOT_COMPUTABLE = "NOT COMPUTABLE"
    RATE_OUT_OF_RANGE = "RATE OUT OF RANGE"


class SensorFlag(models.TextChoices):
    NONE = "", "Numeric reading"
    LOW = "low", "Sensor reported Low"
    HIGH = "high", "Sensor reported High"


class ReadingSource(models.TextChoices):
    VENDOR = "vendor"
    APP = "app"
    NIGHTSCOUT = "nightscout"
    IMPORT = "import"


class GlucoseReading(models.Model):
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="readings")
    device = models.ForeignKey(Device, on_delete=models.SET_NULL, null=True, blank=True, related_name="readings")
    measured_at = models.DateTimeField(help_text="When the sensor measured, UTC.")
    value_mgdl = models.FloatField(null=True, blank=True, help_text="mg/dL; null when the sensor said Low or High.")
    sensor_flag = models.CharField(max_length=4, choices=SensorFlag.choices, default=SensorFlag.NONE, blank=True)
    direction = models.CharField(max_length=20, choices=Direction.choices, blank=True, default="")
    trend_rate = models.FloatField(null=True, blank=True, help_text="mg/dL per minute.")
    is_calibration = models.BooleanField(default=False, help_text="A meter (fingerstick) value, Nightscout 'mbg'.")
    source = models.CharField(max_length=12, choices=ReadingSource.choices)
    received_at = models.DateTimeField()

    class Meta:
        constraints = [
            # One reading per patient, device and instant. Device is nullable, so the
            # index uses COALESCE(device, 0) to make a missing device a value, not a wildcard.
            # measured_at sits second so the same index serves the hot range query.
            models.UniqueConstraint(
                models.F("patient"), models.F("measured_at"), Coalesce("device", 0), name="reading_unique_per_device"
            ),
            models.CheckConstraint(
                condition=(
                    Q(sensor_flag="", value_mgdl__gte=MIN_GLUCOSE_MGDL, value_mgdl__lte=MAX_GLUCOSE_MGDL)
                    | Q(sensor_flag__in=["low", "high"], value_mgdl__isnull=True)
                ),
                name="reading_value_in_range_or_flagged",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.patient_id} {self.measured_at.isoformat()} {self.value_mgdl or self.sensor_flag}"


class TreatmentKind(models.TextChoices):
    CARBS = "carbs"
    BOLUS = "bolus"
    BASAL = "basal"
    EXERCISE = "exercise"
    NOTE = "note"


class Treatment(models.Model):
    """Carbohydrates (g), insulin (U), exercise or a note, with who entered it.

    Unique per patient, kind and time, which is also Nightscout's duplicate rule
    (same created_at and eventType), so uploader retries are idempotent.
    """

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="treatments")
    occurred_at = models.DateTimeField()
    kind = models.CharField(max_length=10, choices=TreatmentKind.choices)
    carbs_g = models.FloatField(null=True, blank=True)
    insulin_units = models.FloatField(null=True, blank=True)
    basal_rate_u_per_h = models.FloatField(null=True, blank=True)
    duration_minutes = models.FloatField(null=True, blank=True)
    note = models.TextField(blank=True, default="")
    event_type = models.CharField(max_length=64, blank=True, default="", help_text="Nightscout eventType, kept verbatim.")
    entered_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    entered_by_label = models.CharField(max_length=100, blank=True, default="")
    source = models.CharField(max_length=12, choices=ReadingSource.choices)
    received_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["patient", "occurred_at", "kind"], name="treatment_unique_per_kind"),
            models.CheckConstraint(condition=Q(carbs_g__isnull=True) | Q(carbs_g__gte=0, carbs_g__lte=500), name="treatment_carbs_range"),
            models.CheckConstraint(
                condition=Q(insulin_units__isnull=True) | Q(insulin_units__gte=0, insulin_units__lte=100),
                name="treatment_insulin_range",
            ),
        ]
        indexes = [models.Index(fields=["patient", "occurred_at"], name="treatment_patient_time")]


class NightscoutDocument(models.Model):
    """devicestatus, profile and non-glucose entries kept as the uploader sent them."""

    class Collection(models.TextChoices):
        DEVICESTATUS = "devicestatus"
        PROFILE = "profile"
        ENTRY = "entry"

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="nightscout_documents")
    collection = models.CharField(max_length=16, choices=Collection.choices)
    created_at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)
    document = models.JSONField()
    digest = models.CharField(max_length=64, help_text="sha256 of the document's canonical JSON, for idempotent re-posts.")

    class Meta:
        indexes = [models.Index(fields=["patient", "collection", "created_at"], name="nsdoc_patient_coll_time")]
        constraints = [
            models.UniqueConstraint(fields=["patient", "collection", "digest"], name="nsdoc_unique_content"),
        ]


class PatientOutbox(models.Model):
    """Durable marker that a patient has new data to process, written in the ingest transaction.

    Every ingest bumps `version`; `enqueued_at` is set when a task is sent, which is the
    debounce (one task in flight per patient). A task deletes the row only if the version
    is unchanged since it started, so no ingest is missed, and the sweeper re-sends rows
    whose task never ran (broker down, worker lost). `taken_at` is set when a task starts on
    the row: a task also takes rows whose own tasks are still queued, so a stream of one-reading
    posts is processed in batches, and the queued tasks then find nothing left to do.
    """

    patient = models.OneToOneField(Patient, on_delete=models.CASCADE, primary_key=True, related_name="outbox")
    dirty_at = models.DateTimeField()
    version = models.BigIntegerField(default=1)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    taken_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)


class PatientSummary(models.Model):
    """The latest state of a patient, refreshed by the ingest worker after each batch."""

    patient = models.OneToOneField(Patient, on_delete=models.CASCADE, primary_key=True, related_name="summary")
    latest_reading = models.ForeignKey(GlucoseReading, on_delete=models.SET_NULL, null=True)
    readings_last_24h = models.PositiveIntegerField(default=0)
    computed_at = models.DateTimeField()
