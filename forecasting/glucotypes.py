"""Glucotype stratification of the whole cohort (Hall et al., PLoS Biol 2018) and its stored history.

Hall H, et al. "Glucotypes reveal new patterns of glucose dysregulation." PLoS Biol
2018;16(7):e2005143. Each patient's last 14 days are cut into 2.5-hour windows, windows are
clustered with tslearn `TimeSeriesKMeans` (Euclidean on sorted windows by default, DTW with a
Sakoe-Chiba band as an option; see forecasting/stratification.py and docs/metrics.md), clusters
are named low / moderate / severe variability, and each patient gets the class they spend most
windows in, with the share per class. The fitted model is stored with tslearn's JSON
serialisation (never pickle) next to the assignments; every run adds rows, so history is kept.

A glucotype describes glucose *variability patterns*; it is not a diagnosis.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
from django.db import transaction
from django.db.models import Count, OuterRef, Subquery
from django.utils import timezone

from forecasting.models import GlucotypeAssignment, GlucotypeModel
from forecasting.stratification import HALL_CITATION, GlucotypeClassifier, make_windows
from glucoscope.metrics import SENSOR_HIGH_MG_DL, SENSOR_LOW_MG_DL
from glucoscope.patients.models import Patient
from glucoscope.readings.models import GlucoseReading, SensorFlag

# Hall 2018 used all available windows; we use the consensus 14-day period (Battelino 2019).
PERIOD_DAYS = 14
# Enough data: at least 12 complete 2.5-h windows (30 h of wear) in the period, so the dominant
# class is not decided by a handful of windows. A product choice, not a published threshold.
MIN_WINDOWS = 12
# A cheap pre-filter before loading readings: 12 windows x 30 five-minute points.
MIN_READINGS = MIN_WINDOWS * 30 // 3  # 15-min sensors give a third of the points
# Patients whose readings are loaded and cut into windows at a time (bounds memory).
CHUNK_PATIENTS = 200

ERR_TOO_FEW_PATIENTS = "Stratification needs at least {n} windows in total; only {got} were found."

Progress = Callable[[int], None]


@dataclass(frozen=True)
class StratificationResult:
    model: GlucotypeModel
    n_assigned: int
    n_skipped: int
    seconds: float


def patients_eligible(
    *, start: datetime, end: datetime, patient_ids: Sequence[int] | None = None, min_readings: int = MIN_READINGS,
) -> list[int]:
    """Patients with at least `min_readings` CGM readings in the period (one aggregate query)."""
    qs = GlucoseReading.objects.filter(measured_at__gte=start, measured_at__lt=end, is_calibration=False)
    if patient_ids is not None:
        qs = qs.filter(patient_id__in=patient_ids)
    rows = qs.values("patient_id").annotate(n=Count("id")).filter(n__gte=min_readings).values_list("patient_id", flat=True)
    return sorted(rows)


def _windows_for(patient_ids: Sequence[int], *, start: datetime, end: datetime) -> dict[int, np.ndarray]:
    rows = GlucoseReading.objects.filter(
        patient_id__in=patient_ids, measured_at__gte=start, measured_at__lt=end, is_calibration=False,
    ).order_by("patient_id", "measured_at").values_list("patient_id", "measured_at", "value_mgdl", "sensor_flag")
    series: dict[int, tuple[list[float], list[float]]] = {pid: ([], []) for pid in patient_ids}
    for pid, measured_at, value, flag in rows.iterator(chunk_size=20_000):
        v, t = series[pid]
        # Sensor limits count at 40/400 mg/dL, as in every metric (docs/metrics.md).
        v.append(SENSOR_LOW_MG_DL if flag == SensorFlag.LOW else SENSOR_HIGH_MG_DL if flag == SensorFlag.HIGH
                 else float("nan") if value is None else value)
        t.append(measured_at.timestamp())
    # Windows use elapsed time only; the local clock does not matter for window shape.
    return {pid: make_windows(np.asarray(v), np.asarray(t)) for pid, (v, t) in series.items()}


def _chunks(ids: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for a in range(0, len(ids), size):
        yield ids[a : a + size]


def classifier_to_json(classifier: GlucotypeClassifier) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "glucotypes.json"
        classifier.to_json(path)
        doc: dict[str, object] = json.loads(path.read_text())
        return doc


def classifier_from_model(model: GlucotypeModel) -> GlucotypeClassifier:
    """Reload a stored classifier through tslearn's JSON loader (no pickle anywhere)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "glucotypes.json"
        path.write_text(json.dumps(model.model_json))
        return GlucotypeClassifier.from_json(path)


def glucotypes_stratify(
    *,
    metric: Literal["euclidean", "dtw"] = "euclidean",
    now: datetime | None = None,
    patient_ids: Sequence[int] | None = None,
    progress: Progress | None = None,
    random_state: int = 0,
) -> StratificationResult:
    """Fit on every eligible patient's windows from the last 14 days, store the model and assignments.

    ``progress`` is called with the number of patients just processed (for a progress bar).
    """
    t0 = time.perf_counter()
    end = now or timezone.now()
    start = end - timedelta(days=PERIOD_DAYS)
    ids = patients_eligible(start=start, end=end, patient_ids=patient_ids)
    windows: dict[int, np.ndarray] = {}
    for chunk in _chunks(ids, CHUNK_PATIENTS):
        windows.update(_windows_for(chunk, start=start, end=end))
        if progress:
            progress(len(chunk))
    kept = [pid for pid in ids if windows[pid].shape[0] >= MIN_WINDOWS]
    total = sum(windows[pid].shape[0] for pid in kept)
    classifier = GlucotypeClassifier(metric=metric, random_state=random_state)
    if total < classifier.n_clusters:
        raise ValueError(ERR_TOO_FEW_PATIENTS.format(n=classifier.n_clusters, got=total))
    t_fit = time.perf_counter()
    classifier.fit(np.concatenate([windows[pid] for pid in kept]))
    fit_seconds = time.perf_counter() - t_fit
    labels = [classifier.classify_windows(windows[pid]) for pid in kept]
    with transaction.atomic():
        model = GlucotypeModel.objects.create(
            metric=metric, representation=classifier.representation, class_names=list(classifier.class_names_),
            class_mean_sd_mgdl=[round(float(x), 2) for x in classifier.class_mean_sd_],
            period_start=start, period_end=end, n_patients=len(kept), n_windows=total,
            fit_seconds=fit_seconds, model_json=classifier_to_json(classifier),
        )
        GlucotypeAssignment.objects.bulk_create([
            GlucotypeAssignment(patient_id=pid, model=model, glucotype=res.glucotype or "",
                                shares={k: round(v, 4) for k, v in res.shares.items()},
                                n_windows=res.n_windows, assigned_at=end)
            for pid, res in zip(kept, labels, strict=True)
        ], batch_size=2000)
    return StratificationResult(model=model, n_assigned=len(kept), n_skipped=len(ids) - len(kept),
                                seconds=time.perf_counter() - t0)


def glucotype_latest(*, patient: Patient) -> GlucotypeAssignment | None:
    return GlucotypeAssignment.objects.filter(patient=patient).select_related("model").order_by("-assigned_at", "-pk").first()


def glucotype_history(*, patient: Patient, limit: int = 12) -> list[GlucotypeAssignment]:
    return list(GlucotypeAssignment.objects.filter(patient=patient).order_by("-assigned_at", "-pk")[:limit])


def latest_glucotype_subquery() -> Subquery:
    """Annotate a Patient queryset with their latest glucotype in the same query (no N+1)."""
    latest = GlucotypeAssignment.objects.filter(patient=OuterRef("pk")).order_by("-assigned_at", "-pk")
    return Subquery(latest.values("glucotype")[:1])


CITATION = HALL_CITATION
