"""Fault: the same task delivered twice at the same time has exactly one effect.

Redis redelivers a task whose worker seemed lost while the first run may still be going, and the
outbox sweeper can enqueue a patient again. These tests run two deliveries of the same work truly
concurrently, on PostgreSQL, and hold both at the point where they would collide:
- two `forecasting.forecast_patients` runs for one patient wait on the same unique key (this test
  holds it), then race when it is released: one Forecast, one RiskAssessment;
- two runs over the same batch of patients (ids given in opposite orders) block on the first patient's
  key and race when it is released: one Forecast, RiskAssessment and event per patient;
- two sends of one notification: the second arrives while the first is mid-push (the FCM stub
  holds the response) and must not push, so the phone gets one push.
The same batch posted twice concurrently is covered in tests/integration/test_worker_processing.py
(test_the_same_batch_posted_twice_concurrently_is_stored_once), the same pipeline task delivered
twice in a row there too (test_the_same_task_delivered_twice_has_one_effect), and a send task
delivered again after it finished in tests/notifications/test_worker_integration.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from forecasting.models import Forecast, ForecastEvent, RiskAssessment
from forecasting.services import model_version_active, patients_forecast
from forecasting.tasks import forecast_patients
from glucoscope.patients.models import Role
from glucoscope.readings.batches import Uploader, reading_batch_ingest
from glucoscope.readings.models import ReadingSource
from notifications import services as notification_services
from notifications.fcm import FcmTransport
from notifications.fcm_stub import FcmStub
from notifications.models import Notification, Status
from tests.factories import PatientFactory, UserFactory
from tests.faults.conftest import backends_waiting_to_insert, django_test_db_connect, forecast_key_held
from tests.integration.private_services import PrivateRedis, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `target` on its own thread and database connection; the list gets its result or exception."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(target())
        except BaseException as exc:  # reported by the test, not lost in the thread
            outcome.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_the_same_forecast_task_delivered_twice_at_once_stores_one_forecast(fault_redis: PrivateRedis) -> None:
    patient = PatientFactory()
    version = model_version_active()
    origin = (timezone.now() - timedelta(minutes=1)).replace(microsecond=0)
    items = [{"timestamp": (origin - timedelta(minutes=5 * i)).isoformat(), "value": 160 - 6 * i, "unit": "mg/dL"}
             for i in range(13)]
    reading_batch_ingest(uploader=Uploader(source=ReadingSource.APP, patient_id=patient.pk), items=items)
    table = Forecast._meta.db_table

    with forecast_key_held(patient_id=patient.pk, origin=origin, model_version_id=version.pk):
        runs = [in_thread(lambda: forecast_patients([patient.pk], {})) for _ in range(2)]
        with django_test_db_connect(autocommit=True) as observer:
            wait_until(lambda: backends_waiting_to_insert(observer, table) == 2, timeout=120,
                       what="both deliveries to reach the forecast INSERT")
    for thread, _ in runs:
        thread.join(timeout=60)
    for _, outcome in runs:
        assert outcome == [None], outcome

    [forecast] = Forecast.objects.filter(patient=patient)
    assert forecast.origin == origin
    assert RiskAssessment.objects.filter(forecast__patient=patient).count() == 1
    assert ForecastEvent.objects.filter(patient=patient).count() <= 1


def test_the_same_batch_forecast_twice_at_once_stores_one_forecast_per_patient(real_services: None, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PREDICTED_LOW_RISK_THRESHOLD = 0.0  # every new forecast raises an event, so a second one would show
    patients = sorted((PatientFactory() for _ in range(8)), key=lambda p: p.pk)
    version = model_version_active()
    origin = (timezone.now() - timedelta(minutes=1)).replace(microsecond=0)
    for patient in patients:
        items = [{"timestamp": (origin - timedelta(minutes=5 * i)).isoformat(), "value": 150 - 3 * i, "unit": "mg/dL"}
                 for i in range(13)]
        reading_batch_ingest(uploader=Uploader(source=ReadingSource.APP, patient_id=patient.pk), items=items)
    ids = [p.pk for p in patients]
    now = origin + timedelta(minutes=1)

    # A run inserts its rows in patient order, whatever the order of the ids it was given, so both
    # wait on the first patient's key and neither holds a key the other will wait for (no deadlock).
    with forecast_key_held(patient_id=ids[0], origin=origin, model_version_id=version.pk):
        runs = [in_thread(lambda order=order: patients_forecast(patient_ids=order, now=now)) for order in (ids, ids[::-1])]
        with django_test_db_connect(autocommit=True) as observer:
            wait_until(lambda: backends_waiting_to_insert(observer, Forecast._meta.db_table) == 2, timeout=120,
                       what="both runs to reach the forecasts' INSERT")
    for thread, _ in runs:
        thread.join(timeout=60)
    for _, outcome in runs:
        assert len(outcome) == 1 and isinstance(outcome[0], list), outcome
        assert sorted(f.patient_id for f in outcome[0]) == ids and {f.status for f in outcome[0]} == {"ok"}

    assert sorted(Forecast.objects.filter(patient__in=patients).values_list("patient_id", flat=True)) == ids
    assert sorted(RiskAssessment.objects.filter(forecast__patient__in=patients).values_list("forecast__patient_id", flat=True)) == ids
    assert sorted(ForecastEvent.objects.filter(patient__in=patients).values_list("patient_id", flat=True)) == ids


def test_a_send_delivered_again_while_the_first_is_mid_push_does_not_push_twice(
    fault_redis: PrivateRedis, tmp_path  # type: ignore[no-untyped-def]
) -> None:
    with FcmStub(directory=tmp_path) as stub:
        transport = FcmTransport(credentials_file=stub.credentials_file, endpoint=stub.url, timeout_seconds=30)
        patient = PatientFactory()
        notification_services.device_register(user=patient.user, token="twice-phone", platform="android")
        notification = notification_services.care_message_send(
            patient=patient, author=UserFactory(role=Role.CLINICIAN), text="See you on Monday."
        )
        stub.state.hold_sends.set()
        first, first_outcome = in_thread(
            lambda: notification_services.notifications_deliver(notification_ids=[notification.pk], transport=transport)
        )
        try:
            wait_until(lambda: stub.state.held == 1, timeout=60, what="the first send to reach the stub")
            # The redelivered task, while the first sender is alive and mid-push: it must not take the row.
            second, second_outcome = in_thread(
                lambda: notification_services.notifications_deliver(notification_ids=[notification.pk], transport=transport)
            )
            second.join(timeout=60)
            assert second_outcome == [notification_services.DeliveryReport()], second_outcome
        finally:
            stub.state.hold_sends.clear()
            stub.state.release.set()
        first.join(timeout=60)
        assert first_outcome[0].sent == 1, first_outcome
        assert len(stub.state.delivered_to("twice-phone")) == 1 and stub.state.held == 1
        row = Notification.objects.get(pk=notification.pk)
        assert (row.status, row.attempts) == (Status.SENT, 1)
