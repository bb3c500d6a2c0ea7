"""Forecast serving: the model registry, per-process model cache, and batched forecasting of patients.

The torch code lives in forecasting/ml (no Django); this module turns database rows into its
inputs and its outputs into rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from forecasting.models import Forecast, ForecastEvent, ForecastStatus, ModelVersion, RiskAssessment
from glucoscope.observability.metrics import observe_forecast_batch
from glucoscope.patients.models import Patient
from glucoscope.readings.models import GlucoseReading, SensorFlag

if TYPE_CHECKING:
    from forecasting.ml.inference import PatientForecast

logger = logging.getLogger(__name__)

# Six hours of context is what the shipped model reads (72 five-minute steps), plus a margin.
CONTEXT = timedelta(hours=6, minutes=30)
RISK_FIELDS = {
    "p_below_70_30min": "below_70_30min",
    "p_below_70_60min": "below_70_60min",
    "p_below_54_30min": "below_54_30min",
    "p_below_54_60min": "below_54_60min",
    "p_above_250_60min": "above_250_60min",
}
ERR_UNKNOWN_VERSION = "No model version {version!r}; `manage.py model_versions list` shows the registered ones."
ERR_NO_PREVIOUS = "There is no earlier version to roll back to."


def _resolve_artifact(path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else Path(settings.BASE_DIR) / candidate


def model_version_register(*, artifact_path: str | Path, name: str = "forecaster") -> ModelVersion:
    """Record an artifact (metadata JSON beside its .pt weights) in the registry; idempotent per version."""
    path = Path(artifact_path)
    metadata = json.loads(_resolve_artifact(str(path)).read_text())
    weights = _resolve_artifact(str(path)).parent / metadata.get("weights_file", path.with_suffix(".pt").name)
    checksum = hashlib.sha256(weights.read_bytes()).hexdigest()
    if metadata.get("sha256") and metadata["sha256"] != checksum:
        raise ValueError(f"{weights} does not match the checksum in {path}; refusing to register a corrupt model")
    stored_path = str(path.relative_to(settings.BASE_DIR)) if path.is_absolute() and path.is_relative_to(settings.BASE_DIR) else str(path)
    version, _ = ModelVersion.objects.get_or_create(
        name=name,
        version=str(metadata.get("version", checksum[:12])),
        defaults={
            "checksum": checksum,
            "artifact_path": stored_path,
            "metrics": metadata.get("metrics_held_out", {}),
            "training_summary": metadata.get("training_data", {}),
        },
    )
    return version


@transaction.atomic
def model_version_activate(*, name: str = "forecaster", version: str) -> ModelVersion:
    """Make one version the active one, atomically (workers pick it up on their next task)."""
    target = ModelVersion.objects.select_for_update().filter(name=name, version=version).first()
    if target is None:
        raise ValueError(ERR_UNKNOWN_VERSION.format(version=version))
    ModelVersion.objects.filter(name=name, is_active=True).exclude(pk=target.pk).update(is_active=False)
    ModelVersion.objects.filter(pk=target.pk).update(is_active=True, activated_at=timezone.now())
    target.refresh_from_db()
    return target


@transaction.atomic
def model_version_rollback(*, name: str = "forecaster") -> ModelVersion:
    """Re-activate the version that was active before the current one."""
    current = ModelVersion.objects.filter(name=name, is_active=True).first()
    earlier = ModelVersion.objects.filter(name=name, activated_at__isnull=False)
    if current is not None:
        earlier = earlier.exclude(pk=current.pk)
    previous = earlier.order_by("-activated_at").first()
    if previous is None:
        raise ValueError(ERR_NO_PREVIOUS)
    return model_version_activate(name=name, version=previous.version)


def model_version_active(*, name: str = "forecaster") -> ModelVersion:
    """The active version; on a fresh install, the model shipped in forecasting/artifacts."""
    active = ModelVersion.objects.filter(name=name, is_active=True).first()
    if active is not None:
        return active
    shipped = model_version_register(artifact_path=settings.FORECASTER_DEFAULT_ARTIFACT, name=name)
    try:
        return model_version_activate(name=name, version=shipped.version)
    except IntegrityError:  # another worker activated concurrently; theirs is as good
        return ModelVersion.objects.get(name=name, is_active=True)


# One loaded network per worker process, reloaded only when the active version changes.
_loaded: dict[int, object] = {}


def forecaster_for(version: ModelVersion):  # type: ignore[no-untyped-def]
    from forecasting.ml.inference import Forecaster

    if version.pk not in _loaded:
        _loaded.clear()
        _loaded[version.pk] = Forecaster.load(_resolve_artifact(version.artifact_path))
    return _loaded[version.pk]


def _local_seconds(moments: Sequence[datetime], zone: ZoneInfo) -> np.ndarray:
    """The model reads naive local time (its time-of-day features), so each UTC instant is shifted by its own offset."""
    return np.array(
        [int(m.timestamp()) + int((m.astimezone(zone).utcoffset() or timedelta(0)).total_seconds()) for m in moments],
        dtype=np.int64,
    )


@observe_forecast_batch
def patients_forecast(*, patient_ids: Sequence[int], now: datetime | None = None) -> list[Forecast]:
    """Forecast a group of patients in one batched forward pass and store the results idempotently."""
    from forecasting.ml.data import batch_from_arrays
    from forecasting.ml.datasets import MAX_STALENESS_MINUTES
    from forecasting.ml.inference import REASON_NO_READINGS, REASON_STALE, STATUS_INSUFFICIENT, PatientForecast

    now = now or timezone.now()
    version = model_version_active()
    forecaster = forecaster_for(version)
    patients = list(Patient.objects.filter(pk__in=patient_ids))
    rows = GlucoseReading.objects.filter(
        patient__in=patients, measured_at__gt=now - CONTEXT, measured_at__lte=now, is_calibration=False
    ).order_by("patient_id", "measured_at").values_list("patient_id", "measured_at", "value_mgdl", "sensor_flag")
    by_patient: dict[int, list[tuple[datetime, object]]] = {p.pk: [] for p in patients}
    for patient_id, measured_at, value, flag in rows:
        # The model takes sensor limits as words and clamps them itself (40/400 mg/dL, flagged).
        by_patient[patient_id].append((measured_at, value if flag == SensorFlag.NONE else flag.capitalize()))
    # Staleness is judged here on the UTC clock: patients in different time zones share one batch.
    stale_after = timedelta(minutes=MAX_STALENESS_MINUTES)
    results: dict[int, PatientForecast] = {}
    batch: list[Patient] = []
    for patient in patients:
        series = by_patient[patient.pk]
        if not series:
            results[patient.pk] = PatientForecast(str(patient.pk), STATUS_INSUFFICIENT, REASON_NO_READINGS)
        elif now - series[-1][0] > stale_after:
            results[patient.pk] = PatientForecast(str(patient.pk), STATUS_INSUFFICIENT, REASON_STALE)
        else:
            batch.append(patient)
    if batch:
        # One flat array per field for the whole batch: the model prepares and forecasts it in one pass.
        series_of = [by_patient[p.pk] for p in batch]
        readings = batch_from_arrays(
            np.concatenate([_local_seconds([m for m, _ in s], ZoneInfo(p.time_zone)) for p, s in zip(batch, series_of, strict=True)]),
            [v for s in series_of for _, v in s],
            [len(s) for s in series_of],
            [str(p.pk) for p in batch],
        )
        outputs = forecaster.forecast_batch(readings).to_patient_forecasts()
        results.update({patient.pk: output for patient, output in zip(batch, outputs, strict=True)})
    return [_store(patient, results[patient.pk], version, series=by_patient[patient.pk], now=now) for patient in patients]


def _store(patient: Patient, result: PatientForecast, version: ModelVersion, *, series: list[tuple[datetime, object]], now: datetime) -> Forecast:
    origin = series[-1][0] if series else now.replace(microsecond=0)
    fields = {
        "status": result.status,
        "reason": result.reason,
        "points": [
            {"minutes_ahead": p.minutes_ahead, "p10": round(p.p10, 1), "p50": round(p.p50, 1), "p90": round(p.p90, 1)}
            for p in result.points
        ],
    }
    with transaction.atomic():
        forecast, created = Forecast.objects.get_or_create(
            patient=patient, origin=origin, model_version=version, defaults=fields,
        )
        if not created and result.status == ForecastStatus.OK and forecast.status != ForecastStatus.OK:
            # The context arrived after the newest reading (out of order, or back-filled): the origin's
            # earlier "insufficient" forecast is completed in place. Conditional, so of two concurrent
            # runs only one completes it and adds its risk row.
            created = bool(
                Forecast.objects.filter(pk=forecast.pk).exclude(status=ForecastStatus.OK).update(**fields)
            )
            forecast.refresh_from_db()
        if created and result.status == ForecastStatus.OK:
            RiskAssessment.objects.create(forecast=forecast, **{RISK_FIELDS[k]: v for k, v in result.risk.items() if k in RISK_FIELDS})
            _raise_events(patient, forecast)
    return forecast


def _raise_events(patient: Patient, forecast: Forecast) -> None:
    """Raise `predicted_low` when the probability of <70 mg/dL within 30 min crosses the threshold upwards."""
    threshold = settings.PREDICTED_LOW_RISK_THRESHOLD
    probability = forecast.risk.below_70_30min
    if probability < threshold:
        return
    previous = (
        RiskAssessment.objects.filter(forecast__patient=patient, forecast__origin__lt=forecast.origin)
        .order_by("-forecast__origin").values_list("below_70_30min", flat=True).first()
    )
    if previous is not None and previous >= threshold:
        return  # still the same episode: one event per crossing, not one per reading
    ForecastEvent.objects.get_or_create(
        forecast=forecast, kind=ForecastEvent.Kind.PREDICTED_LOW,
        defaults={"patient": patient, "probability": probability, "threshold": threshold},
    )




def patients_with_stale_forecast(*, within: timedelta = timedelta(minutes=30)) -> list[int]:
    """Patients with a reading in the last `within` whose latest forecast starts before that reading."""
    from django.db.models import Exists, OuterRef

    from glucoscope.readings.models import PatientSummary

    now = timezone.now()
    covered = Forecast.objects.filter(patient=OuterRef("patient"), origin__gte=OuterRef("latest_reading__measured_at"))
    return list(
        PatientSummary.objects.filter(latest_reading__measured_at__gt=now - within)
        .exclude(Exists(covered)).values_list("patient_id", flat=True)[:10_000]
    )
