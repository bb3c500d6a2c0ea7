"""A posted reading is processed by a real Celery worker over Redis, and survives a Redis outage."""

from __future__ import annotations

import json
import subprocess
import threading
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone

from glucoscope.readings import services
from glucoscope.readings.batches import Uploader, reading_batch_ingest
from glucoscope.readings.models import GlucoseReading, PatientOutbox, PatientSummary, ReadingSource
from tests.conftest import bearer
from tests.factories import PatientFactory
from tests.integration.conftest import WorkerFactory, wait_for
from tests.integration.private_services import PrivateRedis

pytestmark = pytest.mark.integration


def post_readings(patient, minutes_ago: list[int], value: int = 120):  # type: ignore[no-untyped-def]
    now = timezone.now()
    body = [{"timestamp": (now - timedelta(minutes=m)).isoformat(), "value": value + m, "unit": "mg/dL"} for m in minutes_ago]
    return bearer(patient.user).post("/api/v1/readings", data=json.dumps(body), content_type="application/json")


def summary_count(patient_id: int) -> int:
    summary = PatientSummary.objects.filter(patient_id=patient_id).first()
    return summary.readings_last_24h if summary else 0


def test_a_posted_reading_is_processed_by_the_worker_into_a_forecast(celery_worker_process: subprocess.Popen[bytes]) -> None:
    from forecasting.models import Forecast

    patient = PatientFactory()
    response = post_readings(patient, list(range(60, -1, -5)))
    assert response.status_code == 200 and response.json()["accepted"] == 13
    wait_for(lambda: summary_count(patient.pk) == 13, what="the worker to refresh the summary")
    summary = PatientSummary.objects.get(patient=patient)
    assert summary.latest_reading.value_mgdl == 120
    wait_for(lambda: Forecast.objects.filter(patient=patient).exists(), what="the worker to store a forecast")
    forecast = Forecast.objects.get(patient=patient)
    assert forecast.status == "ok" and len(forecast.points) == 24 and forecast.origin == summary.latest_reading.measured_at
    wait_for(lambda: not PatientOutbox.objects.filter(patient=patient).exists(), what="the outbox row to be cleared")


def test_a_burst_of_posts_is_debounced_and_nothing_is_missed(celery_worker_process: subprocess.Popen[bytes]) -> None:
    patient = PatientFactory()
    for minute in range(20, 0, -1):
        assert post_readings(patient, [minute]).status_code == 200
    wait_for(lambda: summary_count(patient.pk) == 20, what="all 20 readings to be reflected")
    wait_for(lambda: not PatientOutbox.objects.filter(patient=patient).exists(), what="the outbox to drain")
    # Debounce: at most one task per patient in flight, so fewer tasks ran than posts were made.
    log = celery_worker_process.log_path.read_text()  # type: ignore[attr-defined]
    tasks_run = log.count("readings.process_patients[") // 2  # "received" and "succeeded" lines
    assert 1 <= tasks_run < 20, log[-2000:]


def test_claims_made_while_a_task_waits_send_no_task_of_their_own_and_none_is_stranded(
    celery_worker_factory: WorkerFactory,
) -> None:
    patients = [PatientFactory() for _ in range(5)]
    broker = redis.Redis.from_url(settings.REDIS_URL)
    # No worker yet: the first post sends a task, which waits; the other four ride on it.
    for patient in patients:
        assert post_readings(patient, [10, 5]).status_code == 200
    assert broker.llen("ingest") == 1
    # Two patients per task: the waiting task cannot take all five, so each full take sends the next.
    celery_worker_factory(env={"OUTBOX_PATIENTS_PER_TASK": "2"})
    wait_for(lambda: not PatientOutbox.objects.filter(patient__in=patients).exists(), what="every patient processed")
    assert [summary_count(patient.pk) for patient in patients] == [2] * 5


def test_readings_posted_while_redis_is_down_are_stored_and_processed_when_it_returns(
    private_redis: PrivateRedis, celery_worker_private_redis: subprocess.Popen[bytes],
) -> None:
    # A private Redis: stopping the shared one would break every other test run using it.
    patient = PatientFactory()
    private_redis.stop()
    try:
        response = post_readings(patient, [15, 10, 5])
        assert response.status_code == 200 and response.json()["accepted"] == 3
        assert GlucoseReading.objects.filter(patient=patient).count() == 3
        outbox = PatientOutbox.objects.get(patient=patient)
        assert outbox.enqueued_at is None, "a failed publish must leave the row for the sweeper"
    finally:
        private_redis.start()

    def sweep() -> bool:
        try:
            services.outbox_sweep()
        except Exception:  # the first publish after a restart may meet a stale pooled connection
            return False
        return summary_count(patient.pk) == 3

    wait_for(sweep, timeout=60, what="the sweeper and worker to process the backlog")
    wait_for(lambda: not PatientOutbox.objects.filter(patient=patient).exists(), what="the outbox to drain")


def test_the_same_batch_posted_twice_concurrently_is_stored_once(real_services: None, transactional_db: None) -> None:
    patient = PatientFactory()
    now = timezone.now()
    batch = [{"timestamp": (now - timedelta(minutes=5 * i)).isoformat(), "value": 100 + i, "unit": "mg/dL"} for i in range(200)]
    # A second uploader sends the same sensor values 20 s later: near duplicates.
    shifted = [{**item, "timestamp": (now - timedelta(minutes=5 * i, seconds=-20)).isoformat()} for i, item in enumerate(batch)]
    barrier = threading.Barrier(4)
    results: list[int] = []

    def upload(items: list[dict[str, object]]) -> None:
        barrier.wait()
        try:
            outcome = reading_batch_ingest(uploader=Uploader(source=ReadingSource.APP, patient_id=patient.pk), items=items)
            results.append(outcome.accepted)
        finally:
            connection.close()

    threads = [threading.Thread(target=upload, args=(items,)) for items in (batch, batch, shifted, shifted)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results) == 200
    assert GlucoseReading.objects.filter(patient=patient).count() == 200


def test_the_same_task_delivered_twice_has_one_effect(real_services: None, transactional_db: None, settings) -> None:  # type: ignore[no-untyped-def]
    from forecasting.models import Forecast
    from glucoscope.celery import app
    from glucoscope.readings.tasks import process_patients

    # Both pipeline stages run in this process, on PostgreSQL, as a redelivered task would.
    app.conf.task_always_eager = True
    settings.CELERY_TASK_ALWAYS_EAGER = True
    patient = PatientFactory()
    reading_batch_ingest(uploader=Uploader(source=ReadingSource.APP, patient_id=patient.pk),
                         items=[{"timestamp": timezone.now().isoformat(), "value": 130, "unit": "mg/dL"}])
    process_patients.apply(args=[[patient.pk]])
    process_patients.apply(args=[[patient.pk]])
    assert PatientSummary.objects.get(patient=patient).readings_last_24h == 1
    assert Forecast.objects.filter(patient=patient).count() == 1
    assert not PatientOutbox.objects.filter(patient=patient).exists()


def test_a_task_waits_for_an_ingest_committing_on_its_patient_instead_of_skipping_it(
    real_services: None, transactional_db: None,
) -> None:
    """The ingest that bumps a claimed row cannot send a task, so the task already sent must not skip the row."""
    import psycopg

    patient = PatientFactory()
    now = timezone.now()
    PatientOutbox.objects.create(patient=patient, dirty_at=now, enqueued_at=now)
    database = connection.settings_dict
    ingest = psycopg.connect(host=database["HOST"], port=database["PORT"], user=database["USER"], dbname=database["NAME"])
    taken: list[int] = []
    try:
        ingest.execute("UPDATE readings_patientoutbox SET version = version + 1 WHERE patient_id = %s", [patient.pk])
        task = threading.Thread(target=lambda: (taken.extend(services.outbox_take(patient_ids=[patient.pk])), connection.close()))
        task.start()
        task.join(timeout=1.0)
        waited = task.is_alive()
        ingest.commit()
    finally:
        ingest.close()
    task.join(timeout=10)
    assert waited, "the task must wait for the committing ingest, not skip the locked row"
    assert taken == [patient.pk]


def test_releasing_a_batch_takes_its_row_locks_in_patient_order_so_an_ingest_cannot_deadlock_it(
    real_services: None, transactional_db: None,
) -> None:
    """Seen in the load test: a batch's DELETE locked rows in scan order, an ingest upserts in id order,
    PostgreSQL cancelled the ingest as a deadlock victim and the phone got a 503."""
    import psycopg

    first, second = PatientFactory(), PatientFactory()
    assert first.pk < second.pk
    now = timezone.now()
    # Stored second-then-first, so a plain DELETE scanning the table would lock `second` first.
    PatientOutbox.objects.create(patient=second, dirty_at=now, enqueued_at=now, taken_at=now)
    PatientOutbox.objects.create(patient=first, dirty_at=now, enqueued_at=now, taken_at=now)
    database = connection.settings_dict
    params = {"host": database["HOST"], "port": database["PORT"], "user": database["USER"], "dbname": database["NAME"]}
    errors: list[Exception] = []

    def release() -> None:
        try:
            services.outbox_complete(versions={second.pk: 1, first.pk: 1})
        except Exception as exc:  # the assertion below reports it
            errors.append(exc)
        finally:
            connection.close()

    ingest = psycopg.connect(**params)
    try:
        # The ingest holds `first` (as its upsert does, in id order) without changing its version.
        ingest.execute("UPDATE readings_patientoutbox SET dirty_at = now() WHERE patient_id = %s", [first.pk])
        task = threading.Thread(target=release)
        task.start()
        with psycopg.connect(**params, autocommit=True) as observer:
            wait_for(lambda: observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                [database["NAME"]],
            ).fetchone()[0] == 1, timeout=10)
        # Then the next row in id order. Had the release locked `second` before waiting for `first`,
        # this would close a cycle and PostgreSQL would cancel one of the two.
        ingest.execute("UPDATE readings_patientoutbox SET dirty_at = now() WHERE patient_id = %s", [second.pk])
        ingest.commit()
    finally:
        ingest.close()
    task.join(timeout=10)
    assert not errors, errors
    assert not PatientOutbox.objects.exists()  # both versions still matched, so both rows were released
