"""Forecast serving: the model registry, per-process model cache, and batched forecasting of patients.

The torch code lives in forecasting/ml (no Django); this module turns database rows into its
inputs and its outputs into rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo

import numpy as np
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, Field, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from forecasting.models import (
    Forecast,
    ForecastEvent,
    ForecastStatus,
    ModelVersion,
    PatientPersonalisation,
    RiskAssessment,
)
from glucoscope.observability.metrics import observe_forecast_batch
from glucoscope.patients.models import Patient
from glucoscope.readings.models import GlucoseReading, SensorFlag, Treatment, TreatmentKind

if TYPE_CHECKING:
    from forecasting.ml.data import BatchReadings
    from forecasting.ml.inference import Forecaster, PatientForecast
    from forecasting.ml.networks import PersonalOutputLayer

logger = logging.getLogger(__name__)

# Six hours of context is what the shipped model reads (72 five-minute steps), plus a margin.
CONTEXT = timedelta(hours=6, minutes=30)
# A patient who logged carbohydrate or bolus insulin this recently counts as one who logs them, so
# the model reads their treatment channels (and no meal in the context means "ate nothing"). Anyone
# else is forecast from glucose alone: "nothing logged" must not read as "ate nothing".
TREATMENTS_KNOWN_WITHIN = timedelta(hours=24)
RISK_FIELDS = {
    "p_below_70_30min": "below_70_30min",
    "p_below_70_60min": "below_70_60min",
    "p_below_54_30min": "below_54_30min",
    "p_below_54_60min": "below_54_60min",
    "p_above_250_60min": "above_250_60min",
}
ERR_UNKNOWN_VERSION = "No model version {version!r}; `manage.py model_versions list` shows the registered ones."
ERR_NO_PREVIOUS = "There is no earlier version to roll back to."
ERR_ARTIFACT_CHANGED = (
    "Model version {version} was registered from {path}, which now holds a different model; register the file "
    "under its own version (`manage.py model_versions register`) or restore the original artifact."
)


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


# The active version as this process last read it. Each call re-reads only the active row's id: one
# small statement on the partial unique index, without the ORM's query building (several times the
# round trip's cost here) or the metrics JSON (tens of kB) that loading the row decodes. The row is
# loaded again only when the id changes (a version's artifact never changes under its id). So a
# switch made by model_version_activate or model_version_rollback (one transaction) is seen by every
# worker at its next batch, not after a cache expiry, and a version row that vanished (a test
# database flushed under a long-lived worker) is never served from the cache.
_active: dict[str, ModelVersion] = {}


def _active_pk(name: str) -> int | None:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {connection.ops.quote_name(ModelVersion._meta.db_table)} WHERE name = %s AND is_active", [name])
        row = cursor.fetchone()
    return None if row is None else int(row[0])


def model_version_active(*, name: str = "forecaster") -> ModelVersion:
    """The active version; on a fresh install, the model shipped in forecasting/artifacts."""
    cached = _active.get(name)
    if cached is not None and _active_pk(name) == cached.pk:
        return cached
    active = ModelVersion.objects.filter(name=name, is_active=True).first()
    if active is None or _superseded_default(active):
        # A fresh install, or an upgrade that shipped a new default model over the file the active
        # (earlier default) version was registered from: the shipped model becomes the active version.
        shipped = model_version_register(artifact_path=settings.FORECASTER_DEFAULT_ARTIFACT, name=name)
        try:
            active = model_version_activate(name=name, version=shipped.version)
        except IntegrityError:  # another worker activated concurrently; theirs is as good
            active = ModelVersion.objects.get(name=name, is_active=True)
    _active[name] = active
    return active


def _superseded_default(version: ModelVersion) -> bool:
    """True when `version` was registered from the shipped default artifact and that file now holds another model."""
    default = _resolve_artifact(str(settings.FORECASTER_DEFAULT_ARTIFACT))
    if _resolve_artifact(version.artifact_path) != default:
        return False
    return json.loads(default.read_text()).get("sha256") != version.checksum


# One loaded network per worker process, reloaded only when the active version changes.
_loaded: dict[tuple[int, str], object] = {}


def forecaster_for(version: ModelVersion) -> Forecaster:
    from forecasting.ml.inference import Forecaster

    # Keyed by checksum too: a row id alone can name another model once rows are deleted and ids reused.
    key = (version.pk, version.checksum)
    if key not in _loaded:
        forecaster = Forecaster.load(_resolve_artifact(version.artifact_path))
        if forecaster.metadata.get("sha256") != version.checksum:
            # The file was replaced after the version was registered (e.g. rolling back to a default
            # model that a newer one has overwritten): serving it would mislabel every forecast.
            raise ValueError(ERR_ARTIFACT_CHANGED.format(version=version.version, path=version.artifact_path))
        _loaded.clear()
        _layers.clear()  # personal layers belong to one network
        _loaded[key] = forecaster
    return cast("Forecaster", _loaded[key])


def _local_seconds(moments: Sequence[datetime], zone: ZoneInfo) -> np.ndarray:
    """The model reads naive local time (its time-of-day features), so each UTC instant is shifted by its own offset."""
    return np.array(
        [int(m.timestamp()) + int((m.astimezone(zone).utcoffset() or timedelta(0)).total_seconds()) for m in moments],
        dtype=np.int64,
    )


@observe_forecast_batch
def patients_forecast(*, patient_ids: Sequence[int], now: datetime | None = None) -> list[Forecast]:
    """Forecast a group of patients in one batched forward pass and store the results idempotently.

    A patient with a personal output layer for the active version (`patient_personalise`) gets it for a
    forecast without carbohydrate or insulin data: layers are tuned from glucose alone.
    """
    from forecasting.ml.datasets import MAX_STALENESS_MINUTES
    from forecasting.ml.inference import REASON_NO_READINGS, REASON_STALE, STATUS_INSUFFICIENT, PatientForecast

    now = now or timezone.now()
    version = model_version_active()
    forecaster = forecaster_for(version)
    # Each patient's newest personalisation key comes with the patient row: no extra round trip per batch.
    patients = patients_with_personalisation_keys(patient_ids=patient_ids, version=version)
    by_patient = _readings_by_patient(patients, start=now - CONTEXT, end=now)
    # Staleness is judged here on the UTC clock: patients in different time zones share one batch.
    stale_after = timedelta(minutes=MAX_STALENESS_MINUTES)
    results: dict[int, PatientForecast] = {}
    used: dict[int, int] = {}
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
        readings = _model_inputs(batch, [by_patient[p.pk] for p in batch], treatments_since=now - TREATMENTS_KNOWN_WITHIN, now=now)
        layers = personal_layers(patients=batch, version=version)
        personal = {}
        for row, patient in enumerate(batch):
            if patient.pk in layers and not readings.has_treatments[row]:
                personal[row] = layers[patient.pk].layer
                used[patient.pk] = layers[patient.pk].pk
        outputs = forecaster.forecast_batch(readings, personal=personal).to_patient_forecasts()
        results.update({patient.pk: output for patient, output in zip(batch, outputs, strict=True)})
        used = {pk: row for pk, row in used.items() if results[pk].status == ForecastStatus.OK}
    return _store(patients, results, version, series=by_patient, personalisations=used, now=now)


def _readings_by_patient(patients: Sequence[Patient], *, start: datetime, end: datetime) -> dict[int, list[tuple[datetime, object]]]:
    """Each patient's readings in (start, end], oldest first, as (UTC time, mg/dL or "Low"/"High")."""
    rows = GlucoseReading.objects.filter(
        patient__in=patients, measured_at__gt=start, measured_at__lte=end, is_calibration=False
    ).order_by("patient_id", "measured_at").values_list("patient_id", "measured_at", "value_mgdl", "sensor_flag")
    by_patient: dict[int, list[tuple[datetime, object]]] = {p.pk: [] for p in patients}
    for patient_id, measured_at, value, flag in rows:
        # The model takes sensor limits as words and clamps them itself (40/400 mg/dL, flagged).
        by_patient[patient_id].append((measured_at, value if flag == SensorFlag.NONE else flag.capitalize()))
    return by_patient


def _model_inputs(
    patients: Sequence[Patient], series_of: Sequence[Sequence[tuple[datetime, object]]], *,
    treatments_since: datetime | None, now: datetime,
) -> BatchReadings:
    """The model's flat-array batch: local clock times, glucose, and the treatments logged since `treatments_since`
    (none when it is None)."""
    from forecasting.ml.data import batch_from_arrays

    carbs = insulin = known = None  # glucose only: batch_from_arrays reads no treatments for anyone
    if treatments_since is not None:
        carbs, insulin, known = _treatments_on_readings(patients, series_of, since=treatments_since, now=now)
    return batch_from_arrays(
        np.concatenate([_local_seconds([m for m, _ in s], ZoneInfo(p.time_zone)) for p, s in zip(patients, series_of, strict=True)]),
        [v for s in series_of for _, v in s],
        [len(s) for s in series_of],
        [str(p.pk) for p in patients],
        carbs=carbs, insulin=insulin, has_treatments=known,
    )


def _treatments_on_readings(
    patients: Sequence[Patient], series_of: Sequence[Sequence[tuple[datetime, object]]], *, since: datetime, now: datetime,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Carbohydrate (g) and bolus insulin (U) per reading of the batch, and who logs them at all.

    The model's channels hold what was eaten or injected in the 5 minutes up to each reading (the
    shared CSV format), so a treatment counts at the first reading at or after it; one logged after
    the newest reading (the origin) is already known, so it counts there. Returns ``[N]`` carbs,
    ``[N]`` insulin, in the order of the concatenated series, and ``[P]`` treatments-known flags: a
    patient who logged any treatment in (since, now] is one who logs them.
    """
    total = sum(len(series) for series in series_of)
    carbs, insulin = np.zeros(total), np.zeros(total)
    rows = Treatment.objects.filter(
        patient__in=patients, kind__in=[TreatmentKind.CARBS, TreatmentKind.BOLUS],
        occurred_at__gt=since, occurred_at__lte=now,
    ).values_list("patient_id", "occurred_at", "carbs_g", "insulin_units")
    logged: dict[int, list[tuple[datetime, float, float]]] = {}
    for patient_id, occurred_at, grams, units in rows:
        logged.setdefault(patient_id, []).append((occurred_at, grams or 0.0, units or 0.0))
    known = np.array([p.pk in logged for p in patients], dtype=bool)
    start = 0
    for patient, series in zip(patients, series_of, strict=True):
        in_context = [t for t in logged.get(patient.pk, ()) if series and t[0] >= series[0][0]]
        if in_context:
            reading_seconds = np.array([m.timestamp() for m, _ in series])
            at = np.searchsorted(reading_seconds, [t[0].timestamp() for t in in_context], side="left")
            at = start + np.minimum(at, len(series) - 1)
            np.add.at(carbs, at, [t[1] for t in in_context])
            np.add.at(insulin, at, [t[2] for t in in_context])
        start += len(series)
    return carbs, insulin, known


def _store(
    patients: Sequence[Patient], results: dict[int, PatientForecast], version: ModelVersion, *,
    series: dict[int, list[tuple[datetime, object]]], personalisations: dict[int, int], now: datetime,
) -> list[Forecast]:
    """Store a batch's forecasts in one transaction and a fixed number of statements, whatever its size.

    Exactly once per (patient, origin, model version), however many runs race on the same batch: the
    run whose INSERT creates a forecast (or completes an insufficient one in place) is the only one
    that adds its risk row and raises its events; the others return what is stored.
    """
    candidates: dict[int, Forecast] = {}
    for patient in patients:
        result, readings = results[patient.pk], series[patient.pk]
        candidates[patient.pk] = Forecast(
            patient=patient, model_version=version,
            origin=readings[-1][0] if readings else now.replace(microsecond=0),
            status=result.status, reason=result.reason, personalisation_id=personalisations.get(patient.pk),
            points=[
                {"minutes_ahead": p.minutes_ahead, "p10": round(p.p10, 1), "p50": round(p.p50, 1), "p90": round(p.p90, 1)}
                for p in result.points
            ],
        )
    with transaction.atomic():
        created = _forecasts_insert_new(list(candidates.values()))
        stored = {patient_id: candidates[patient_id] for patient_id in created}
        conflicting = [f for patient_id, f in candidates.items() if patient_id not in created]
        if conflicting:
            # A new statement, so it sees the rows of the runs that the INSERT waited for.
            stored.update({f.patient_id: f for f in Forecast.objects.filter(
                reduce(operator.or_, (Q(patient_id=f.patient_id, origin=f.origin) for f in conflicting)),
                model_version=version,
            )})
        # The context arrived after the newest reading (out of order, or back-filled): the origin's
        # earlier "insufficient" forecast is completed in place, by whichever run locks it first.
        completed = _forecasts_complete([
            (stored[patient_id], candidates[patient_id]) for patient_id in stored.keys() - created
            if results[patient_id].status == ForecastStatus.OK and stored[patient_id].status != ForecastStatus.OK
        ])
        fresh = [stored[patient_id] for patient_id in sorted(created | completed) if results[patient_id].status == ForecastStatus.OK]
        RiskAssessment.objects.bulk_create([
            # Assigning the forecast caches the risk on it (forecast.risk), for _raise_events and callers.
            RiskAssessment(forecast=f, **{RISK_FIELDS[k]: v for k, v in results[f.patient_id].risk.items() if k in RISK_FIELDS})
            for f in fresh
        ])
        _raise_events(fresh)
    # A patient deleted while this ran has neither a created nor a stored row: nothing to return for it.
    return [stored[patient.pk] for patient in patients if patient.pk in stored]


_FORECAST_INSERT_FIELDS = ("patient", "origin", "model_version", "status", "reason", "points", "personalisation", "created_at")
# The conflict target is the forecast_unique_per_origin constraint.
_FORECAST_INSERT = (
    "INSERT INTO {table} (patient_id, origin, model_version_id, status, reason, points, personalisation_id, created_at) VALUES {rows}"
    " ON CONFLICT (patient_id, origin, model_version_id) DO NOTHING RETURNING id, patient_id"
)


def _forecasts_insert_new(forecasts: list[Forecast]) -> set[int]:
    """INSERT the forecasts whose (patient, origin, model version) is not stored; the patients of those inserted.

    ON CONFLICT DO NOTHING waits for a concurrent run's uncommitted row of the same key and then skips
    it, and RETURNING names exactly the rows this statement created (the ORM's bulk_create returns no
    ids with ignore_conflicts). Rows go in patient order, so runs over overlapping batches take the
    unique-index locks in the same order and cannot deadlock. The ids are set on the objects.
    """
    if not forecasts:
        return set()
    fields = [cast("Field[Any, Any]", Forecast._meta.get_field(name)) for name in _FORECAST_INSERT_FIELDS]
    ordered = sorted(forecasts, key=lambda f: f.patient_id)
    created: dict[int, int] = {}
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    # One statement on PostgreSQL; SQLite's bound-parameter limit may split a large batch.
    size = connection.ops.bulk_batch_size(fields, ordered) or len(ordered)
    with connection.cursor() as cursor:
        for start in range(0, len(ordered), size):
            chunk = ordered[start : start + size]
            cursor.execute(
                _FORECAST_INSERT.format(table=connection.ops.quote_name(Forecast._meta.db_table), rows=", ".join([row] * len(chunk))),
                [field.get_db_prep_save(field.pre_save(obj, add=True), connection) for obj in chunk for field in fields],
            )
            created.update({patient_id: pk for pk, patient_id in cursor.fetchall()})
    for forecast in forecasts:
        if forecast.patient_id in created:
            forecast.pk = created[forecast.patient_id]
            forecast._state.adding, forecast._state.db = False, connection.alias
    return set(created)


_COMPLETED_FIELDS = ["status", "reason", "points", "personalisation"]


def _forecasts_complete(pairs: list[tuple[Forecast, Forecast]]) -> set[int]:
    """Overwrite stored non-OK forecasts with OK ones computed now; the patients whose row this run completed.

    The rows are locked (in id order) and re-checked first: of two runs, the second waits for the
    first to commit, then finds the row OK and leaves it, so only one run adds its risk row.
    """
    if not pairs:
        return set()
    locked = set(
        Forecast.objects.select_for_update().filter(pk__in=[stored.pk for stored, _ in pairs])
        .exclude(status=ForecastStatus.OK).order_by("pk").values_list("pk", flat=True)
    )
    completed = []
    for stored, computed in pairs:
        if stored.pk in locked:
            for field in _COMPLETED_FIELDS:
                setattr(stored, field, getattr(computed, field))
            completed.append(stored)
    Forecast.objects.bulk_update(completed, _COMPLETED_FIELDS)
    return {stored.patient_id for stored in completed}


def _raise_events(forecasts: list[Forecast]) -> None:
    """Raise `predicted_low` where the probability of <70 mg/dL within 30 min crosses the threshold upwards.

    Upwards means from the patient's previous origin (any model version): one event per crossing, not
    one per reading of the same episode. The previous risks of the whole batch come in one query.
    """
    threshold = settings.PREDICTED_LOW_RISK_THRESHOLD
    crossing = [f for f in forecasts if f.risk.below_70_30min >= threshold]
    if not crossing:
        return
    earlier = RiskAssessment.objects.filter(forecast__patient=OuterRef("patient"), forecast__origin__lt=OuterRef("origin"))
    previous = dict(
        Forecast.objects.filter(pk__in=[f.pk for f in crossing])
        .annotate(previous=Subquery(earlier.order_by("-forecast__origin").values("below_70_30min")[:1]))
        .values_list("pk", "previous")
    )
    ForecastEvent.objects.bulk_create(
        [
            ForecastEvent(forecast=f, patient_id=f.patient_id, kind=ForecastEvent.Kind.PREDICTED_LOW,
                          probability=f.risk.below_70_30min, threshold=threshold)
            for f in crossing if previous[f.pk] is None or previous[f.pk] < threshold
        ],
        ignore_conflicts=True,  # a forecast's event is raised once (forecast_event_once)
    )


def patients_with_stale_forecast(*, within: timedelta = timedelta(minutes=30)) -> list[int]:
    """Patients with a reading in the last `within` whose latest forecast starts before that reading."""
    from glucoscope.readings.models import PatientSummary

    now = timezone.now()
    covered = Forecast.objects.filter(patient=OuterRef("patient"), origin__gte=OuterRef("latest_reading__measured_at"))
    return list(
        PatientSummary.objects.filter(latest_reading__measured_at__gt=now - within)
        .exclude(Exists(covered)).values_list("patient_id", flat=True)[:10_000]
    )


# --- Personalisation: a patient's own output layer (forecasting/ml/personalise.py) ---------------------


class PersonalisationRefused(ValueError):
    """The patient cannot be personalised now (too little data); the message says why."""


def patient_personalise(*, patient_id: int, now: datetime | None = None, only_if_due: bool = False) -> PatientPersonalisation | None:
    """Tune the active version's output layer on the patient's last PERSONALISATION_HISTORY of readings; store the outcome.

    Always stores a row, kept or not, so the sweep does not retry a patient the tuning did not help
    until PERSONALISATION_REFRESH has passed. Tuning reads glucose only (forecasting/ml/personalise.py).
    With `only_if_due` (the task), nothing is done for a patient who is not due, and the check is made
    again under a lock on the patient before storing, so two runs racing on one patient (a redelivered
    task next to the next day's sweep) store one row; the loser returns None.

    Raises:
        PersonalisationRefused: no such patient, or too little data (fewer than MIN_DAYS days of readings).
    """
    from forecasting.ml.personalise import fine_tune

    now = now or timezone.now()
    version = model_version_active()
    forecaster = forecaster_for(version)
    patient = Patient.objects.filter(pk=patient_id).first()
    if patient is None:
        raise PersonalisationRefused(f"there is no patient {patient_id}")
    if only_if_due and not patients_due_for_personalisation(patient_ids=[patient_id], now=now):
        return None
    start = now - settings.PERSONALISATION_HISTORY
    series = _readings_by_patient([patient], start=start, end=now)[patient.pk]
    try:
        result = fine_tune(forecaster, _model_inputs([patient], [series], treatments_since=None, now=now).subject(0))
    except ValueError as refused:
        raise PersonalisationRefused(f"patient {patient_id}: {refused}") from refused
    with transaction.atomic():
        if Patient.objects.select_for_update().filter(pk=patient_id).first() is None:
            return None  # deleted while tuning
        if only_if_due and _personalised_recently(version, now).filter(patient_id=patient_id).exists():
            return None
        return PatientPersonalisation.objects.create(
            patient=patient, model_version=version, fitted_at=now,
            data_start=series[0][0], data_end=series[-1][0], days_of_data=result.days,
            fit_windows=result.fit_windows, check_windows=result.check_windows,
            population_loss=result.population_loss, personal_loss=result.personal_loss,
            output_layer=result.layer.to_bytes() if result.layer is not None else None,
        )


def _personalised_recently(version: ModelVersion, now: datetime) -> QuerySet[PatientPersonalisation]:
    return PatientPersonalisation.objects.filter(model_version=version, fitted_at__gt=now - settings.PERSONALISATION_REFRESH)


def patients_due_for_personalisation(*, patient_ids: Sequence[int] | None = None, now: datetime | None = None) -> list[int]:
    """Patients (of `patient_ids`, or all) with at least MIN_READINGS readings in PERSONALISATION_HISTORY and no
    tuning for the active version within PERSONALISATION_REFRESH (one aggregate query over the period, as the
    nightly glucotypes do)."""
    from forecasting.glucotypes import patients_eligible
    from forecasting.ml.personalise import MIN_READINGS

    now = now or timezone.now()
    # The readings patient_personalise reads, (now - history, now], as the half-open [start, end) it counts.
    tick = timedelta(microseconds=1)
    enough = patients_eligible(
        start=now - settings.PERSONALISATION_HISTORY + tick, end=now + tick, patient_ids=patient_ids, min_readings=MIN_READINGS,
    )
    recent = _personalised_recently(model_version_active(), now)
    if patient_ids is not None:
        recent = recent.filter(patient_id__in=patient_ids)
    done = set(recent.values_list("patient_id", flat=True))
    return [patient_id for patient_id in enough if patient_id not in done]


@dataclass(frozen=True)
class PersonalLayer:
    """A stored personal output layer, as the worker uses it."""

    pk: int
    layer: PersonalOutputLayer


# Decoded layers per worker process (None for a tuning that was not kept), by (row id, patient, time
# fitted): rows are never updated, and the patient and time guard against a row id that names another
# row after a database restore. A batch gets its patients' newest keys with the patient rows; a layer
# (37 kB) is read once per process. Cleared when the process loads another model version.
_layers: OrderedDict[tuple[int, int, datetime], PersonalLayer | None] = OrderedDict()
LAYER_CACHE_SIZE = 4096


def patients_with_personalisation_keys(*, patient_ids: Sequence[int], version: ModelVersion) -> list[Patient]:
    """The patients, each annotated with the id and time fitted of their newest personalisation for `version`
    (what `personal_layers` reads), in the same query."""
    newest = PatientPersonalisation.objects.filter(patient=OuterRef("pk"), model_version=version).order_by("-fitted_at", "-pk")
    return list(Patient.objects.filter(pk__in=patient_ids).annotate(
        newest_personalisation_pk=Subquery(newest.values("pk")[:1]),
        newest_personalisation_fitted_at=Subquery(newest.values("fitted_at")[:1]),
    ))


def personal_layers(*, patients: Sequence[Patient], version: ModelVersion) -> dict[int, PersonalLayer]:
    """Patient id -> the kept layer of their newest personalisation for `version` (none if their newest was not kept).

    `patients` come from `patients_with_personalisation_keys`.
    """
    from forecasting.ml.networks import PatchGRUForecaster, PersonalOutputLayer

    keys = [
        (p.newest_personalisation_pk, p.pk, p.newest_personalisation_fitted_at)  # type: ignore[attr-defined]
        for p in patients if p.newest_personalisation_pk is not None  # type: ignore[attr-defined]
    ]
    missing = {key[0]: key for key in keys if key not in _layers}
    if missing:
        network = forecaster_for(version).network
        assert isinstance(network, PatchGRUForecaster)
        for pk, data in PatientPersonalisation.objects.filter(pk__in=missing).values_list("pk", "output_layer"):
            # None remembers "not kept", so such a patient costs no query at their next batch either.
            _layers[missing[pk]] = None if data is None else PersonalLayer(
                pk, PersonalOutputLayer.from_bytes(bytes(cast(bytes, data)), network))
    found = {}
    for key in keys:
        if key in _layers:  # a row deleted since the patients were read (an account deletion) is skipped
            _layers.move_to_end(key)
            layer = _layers[key]
            if layer is not None:
                found[key[1]] = layer
    while len(_layers) > LAYER_CACHE_SIZE:
        _layers.popitem(last=False)
    return found
