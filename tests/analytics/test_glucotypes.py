"""Cohort glucotype stratification: stored tslearn JSON model, assignments with history, task and command."""

from __future__ import annotations

import io
import json
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from tslearn.clustering import TimeSeriesKMeans

from forecasting import glucotypes
from forecasting.models import GlucotypeAssignment, GlucotypeModel
from forecasting.stratification import synthetic_patients
from glucoscope.patients.models import Patient
from glucoscope.web.tasks import stratify_glucotypes
from tests.analytics.helpers import add_readings
from tests.factories import PatientFactory

pytestmark = pytest.mark.django_db
KINDS = [0, 0, 0, 1, 1, 1, 2, 2, 2]


@pytest.fixture
def cohort() -> list[tuple[int, int]]:
    x, kind = synthetic_patients(len(KINDS), days=3, seed=7, kinds=KINDS)
    out = []
    for row, k in zip(x, kind, strict=True):
        patient = PatientFactory()
        add_readings(patient, [float(v) for v in row])
        out.append((patient.pk, int(k)))
    add_readings(PatientFactory(), [120.0] * 50)  # too little data: not eligible
    return out


def test_stratify_stores_the_model_as_tslearn_json_and_one_assignment_per_patient(cohort: list[tuple[int, int]]) -> None:
    result = glucotypes.glucotypes_stratify()
    model = result.model
    assert result.n_assigned == len(KINDS) and model.class_names == ["low", "moderate", "severe"]
    assert model.class_mean_sd_mgdl == sorted(model.class_mean_sd_mgdl)
    # The stored document is tslearn's own JSON: plain TimeSeriesKMeans.from_json loads it, no pickle.
    document = json.dumps(model.model_json)
    assert "pickle" not in document.lower()
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "m.json"
        p.write_text(document)
        km = TimeSeriesKMeans.from_json(str(p))
    assert np.asarray(km.cluster_centers_).shape[0] == 3
    reloaded = glucotypes.classifier_from_model(model)
    assert reloaded.class_names_ == ["low", "moderate", "severe"]
    rows = {a.patient_id: a for a in GlucotypeAssignment.objects.filter(model=model)}
    assert set(rows) == {pid for pid, _ in cohort}
    severe = {k: np.mean([rows[pid].shares["severe"] for pid, kk in cohort if kk == k]) for k in (0, 1, 2)}
    assert severe[0] <= severe[1] <= severe[2] and severe[2] > severe[0]
    for a in rows.values():
        assert a.glucotype in {"low", "moderate", "severe"} and sum(a.shares.values()) == pytest.approx(1, abs=1e-3)


def test_each_run_adds_history_and_latest_is_the_newest(cohort: list[tuple[int, int]]) -> None:
    first = glucotypes.glucotypes_stratify(now=timezone.now() - timedelta(minutes=1))
    second = glucotypes.glucotypes_stratify()
    pid = cohort[0][0]
    assert GlucotypeAssignment.objects.filter(patient_id=pid).count() == 2
    patient = Patient.objects.get(pk=pid)
    latest = glucotypes.glucotype_latest(patient=patient)
    assert latest is not None and latest.model_id == second.model.pk != first.model.pk
    assert [a.model_id for a in glucotypes.glucotype_history(patient=patient)] == [second.model.pk, first.model.pk]


def test_the_beat_task_runs_the_service(cohort: list[tuple[int, int]]) -> None:
    out = stratify_glucotypes.delay().get()
    assert out["assigned"] == len(KINDS) and GlucotypeModel.objects.filter(pk=out["model_id"]).exists()
    assert stratify_glucotypes.name.startswith("forecasting.")  # routed to the forecasting queue


def test_command_prints_a_report(cohort: list[tuple[int, int]]) -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    call_command("stratify_patients", stdout=stdout, stderr=stderr)
    assert f"{len(KINDS)} patients assigned" in stdout.getvalue()
    assert "patients" in stderr.getvalue()  # the tqdm bar


def test_too_little_data_is_a_clear_error(db: None) -> None:
    with pytest.raises(CommandError, match="at least 3 windows"):
        call_command("stratify_patients", "--no-progress", stdout=io.StringIO())
    with pytest.raises(ValueError) as exc:
        glucotypes.glucotypes_stratify()
    assert str(exc.value) == glucotypes.ERR_TOO_FEW_PATIENTS.format(n=3, got=0)
