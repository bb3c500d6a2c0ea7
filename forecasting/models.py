"""Model registry, stored forecasts, near-term risk, and the domain events notifications consume."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from glucoscope.patients.models import Patient


class ModelVersion(models.Model):
    """One trained forecaster: files are a state_dict plus JSON metadata, loaded with weights_only=True."""

    name = models.CharField(max_length=64, default="forecaster")
    version = models.CharField(max_length=64)
    checksum = models.CharField(max_length=64, help_text="sha256 of the weights file")
    artifact_path = models.CharField(max_length=500, help_text="metadata JSON, relative to the repository or absolute")
    metrics = models.JSONField(default=dict, blank=True)
    training_summary = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    is_active = models.BooleanField(default=False)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="model_version_unique"),
            # Exactly one active version per model name; switching is one transaction.
            models.UniqueConstraint(fields=["name"], condition=Q(is_active=True), name="model_version_one_active"),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.version}{' (active)' if self.is_active else ''}"


class ForecastStatus(models.TextChoices):
    OK = "ok"
    INSUFFICIENT_DATA = "insufficient_data"


class Forecast(models.Model):
    """Glucose forecast from one origin (the patient's latest reading), in mg/dL with its 80% band.

    `points` is a list of {minutes_ahead, p10, p50, p90}. Unique per patient, origin and
    model version, so a redelivered task stores nothing twice.
    """

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="forecasts")
    origin = models.DateTimeField(help_text="Time of the latest reading the forecast starts from (UTC).")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="forecasts")
    status = models.CharField(max_length=20, choices=ForecastStatus.choices)
    reason = models.CharField(max_length=200, blank=True, default="")
    points = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["patient", "origin", "model_version"], name="forecast_unique_per_origin"),
        ]
        indexes = [models.Index(fields=["patient", "-origin"], name="forecast_patient_origin")]


class RiskAssessment(models.Model):
    """Calibrated probabilities of glucose events after the forecast's origin (estimates, not a diagnosis)."""

    forecast = models.OneToOneField(Forecast, on_delete=models.CASCADE, related_name="risk")
    below_70_30min = models.FloatField()
    below_70_60min = models.FloatField()
    below_54_30min = models.FloatField()
    below_54_60min = models.FloatField()
    above_250_60min = models.FloatField()


class ForecastEvent(models.Model):
    """A domain event for the notifications work: the predicted-low risk crossed the patient's threshold."""

    class Kind(models.TextChoices):
        PREDICTED_LOW = "predicted_low"

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="forecast_events")
    forecast = models.ForeignKey(Forecast, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    probability = models.FloatField()
    threshold = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["forecast", "kind"], name="forecast_event_once")]
