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


class PatientPersonalisation(models.Model):
    """One tuning of a model version's output layer on a patient's own readings (forecasting/ml/personalise.py).

    `output_layer` holds the tuned layer (float32, little-endian: weight then bias) when it beat the
    population layer on the newest, held-back part of the patient's data; otherwise it is empty and
    the patient keeps the population layer. Layers are tuned from glucose alone and used only for
    forecasts without carbohydrate or insulin data (forecasting/ml/personalise.py says why). Rows are never updated: each run adds one, and the
    newest row per patient and version is the one the worker uses.
    """

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="personalisations")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="personalisations")
    fitted_at = models.DateTimeField()
    data_start = models.DateTimeField(help_text="First reading used (UTC).")
    data_end = models.DateTimeField(help_text="Last reading used (UTC).")
    days_of_data = models.FloatField(help_text="Readings x 5 min, in days.")
    fit_windows = models.PositiveIntegerField()
    check_windows = models.PositiveIntegerField()
    population_loss = models.FloatField(help_text="Pinball loss of the population layer on the held-back windows.")
    personal_loss = models.FloatField(help_text="Pinball loss of the tuned layer on the held-back windows.")
    output_layer = models.BinaryField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["patient", "model_version", "-fitted_at"], name="personalisation_latest")]

    def __str__(self) -> str:
        return f"personalisation of patient {self.patient_id} for {self.model_version_id} ({'kept' if self.kept else 'not kept'})"

    @property
    def kept(self) -> bool:
        return self.output_layer is not None


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
    personalisation = models.ForeignKey(
        PatientPersonalisation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The patient's own output layer this forecast used; empty for the population model.",
    )
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


class GlucotypeModel(models.Model):
    """One fitted glucotype classifier (Hall et al., PLoS Biol 2018), kept as tslearn's own JSON, never pickle.

    `model_json` is exactly what `GlucotypeClassifier.to_json` writes (tslearn's TimeSeriesKMeans JSON
    plus our fitted attributes under one key), so it reloads with `from_json` and stays auditable.
    """

    created_at = models.DateTimeField(auto_now_add=True)
    metric = models.CharField(max_length=16)
    representation = models.CharField(max_length=16)
    class_names = models.JSONField(default=list)
    class_mean_sd_mgdl = models.JSONField(default=list, help_text="Mean within-window SD per class, mg/dL.")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    n_patients = models.PositiveIntegerField()
    n_windows = models.PositiveIntegerField()
    fit_seconds = models.FloatField()
    model_json = models.JSONField()

    def __str__(self) -> str:
        return f"Glucotype model {self.pk} ({self.metric}, {self.created_at:%Y-%m-%d})"


class GlucotypeAssignment(models.Model):
    """A patient's dominant glucotype and share of 2.5-h windows per class from one stratification run.

    Rows are never updated: each run adds one per patient, so the history of assignments is kept.
    """

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="glucotype_assignments")
    model = models.ForeignKey(GlucotypeModel, on_delete=models.CASCADE, related_name="assignments")
    glucotype = models.CharField(max_length=32)
    shares = models.JSONField(help_text="Share (0-1) of the patient's windows in each class.")
    n_windows = models.PositiveIntegerField()
    assigned_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "patient"], name="glucotype_once_per_model")]
        indexes = [models.Index(fields=["patient", "-assigned_at"], name="glucotype_patient_time")]
