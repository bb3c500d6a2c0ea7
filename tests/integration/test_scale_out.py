"""Scale-out: two Celery workers on the forecasting queue share the work, and no patient is forecast twice.

Three real worker processes over Redis, as in production (docs/scaling.md): one consumes ingest
and notifications, two consume only forecasting. Each forecasting worker writes JSON log lines;
its "forecast batch" lines name the patients it forecast and the request that caused the work.
"""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from django.db.models import Count
from django.utils import timezone

from forecasting.models import Forecast
from glucoscope.readings.models import PatientOutbox
from tests.conftest import bearer
from tests.factories import PatientFactory
from tests.integration.conftest import WorkerFactory, wait_for, wait_ready

pytestmark = pytest.mark.integration
PATIENTS = 40


def forecast_batches(worker: subprocess.Popen[bytes]) -> list[dict[str, object]]:
    log_path: Path = worker.log_path  # type: ignore[attr-defined]
    entries = []
    for line in log_path.read_bytes().splitlines():
        if line.startswith(b"{"):
            entry = orjson.loads(line)
            if entry.get("logger") == "glucoscope.observability.metrics" and str(entry["message"]).startswith("forecast batch"):
                entries.append(entry)
    return entries


def test_two_forecasting_workers_split_the_work_without_forecasting_a_patient_twice(
    celery_worker_factory: WorkerFactory,
) -> None:
    json_logs = {"LOG_FORMAT": "json"}
    # Small tasks, so however the ingest worker coalesces the 40 patients there are several forecast
    # tasks to share (with the default of 100 a slow start could put everyone into one task).
    small_tasks = {**json_logs, "OUTBOX_PATIENTS_PER_TASK": "4"}
    workers = {
        "ingest": celery_worker_factory(queues="ingest,notifications", name="ingest", wait=False, env=small_tasks),
        "forecast-a": celery_worker_factory(queues="forecasting", name="forecast-a", wait=False, env=json_logs),
        "forecast-b": celery_worker_factory(queues="forecasting", name="forecast-b", wait=False, env=json_logs),
    }
    for worker in workers.values():
        wait_ready(worker)

    patients = [PatientFactory() for _ in range(PATIENTS)]
    now = timezone.now()
    request_ids: dict[int, str] = {}
    for patient in patients:
        body = [{"timestamp": (now - timedelta(minutes=m)).isoformat(), "value": 110 + m, "unit": "mg/dL"} for m in range(60, -1, -5)]
        request_ids[patient.pk] = f"scale-out-{patient.pk:08d}"
        response = bearer(patient.user).post(
            "/api/v1/readings", data=json.dumps(body), content_type="application/json", HTTP_X_REQUEST_ID=request_ids[patient.pk],
        )
        assert response.status_code == 200 and response.json()["accepted"] == 13

    ids = [p.pk for p in patients]
    wait_for(lambda: Forecast.objects.filter(patient_id__in=ids).values("patient").distinct().count() == PATIENTS,
             timeout=120, what="a forecast for every patient")
    wait_for(lambda: not PatientOutbox.objects.filter(patient_id__in=ids).exists(), timeout=60, what="the outbox to drain")

    # Exactly one forecast per patient and origin, whichever worker made it.
    per_origin = Forecast.objects.filter(patient_id__in=ids).values("patient", "origin").annotate(n=Count("pk"))
    assert len(per_origin) == PATIENTS and all(row["n"] == 1 for row in per_origin), list(per_origin)
    assert all(f.status == "ok" for f in Forecast.objects.filter(patient_id__in=ids))

    # The work was split: each forecasting worker forecast some of the patients, none forecast by both.
    forecast_by: dict[str, set[int]] = {}
    for name in ("forecast-a", "forecast-b"):
        batches = forecast_batches(workers[name])
        forecast_by[name] = {pid for batch in batches for pid in batch["patient_ids"]}  # type: ignore[attr-defined]
        # Each batch line carries its task id and the id of the HTTP request whose task started it. A task
        # also takes patients whose own tasks are still queued, so that request may be another patient's.
        for batch in batches:
            assert batch.get("task_name") == "forecasting.forecast_patients" and batch.get("task_id")
            assert batch.get("request_id") in set(request_ids.values())
    split = {name: len(forecast) for name, forecast in forecast_by.items()}
    assert all(count > 0 for count in split.values()), f"one worker did all the work: {split}"
    assert forecast_by["forecast-a"] | forecast_by["forecast-b"] == set(ids)
    assert not forecast_by["forecast-a"] & forecast_by["forecast-b"]
    # The ingest worker never ran the forecaster: the queues really are separate.
    assert forecast_batches(workers["ingest"]) == []
