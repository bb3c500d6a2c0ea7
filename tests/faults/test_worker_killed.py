"""Fault: a Celery worker is killed (SIGKILL) in the middle of a forecast and of a notification send.

"In the middle" is made deterministic with real resources the task needs, not fake code paths:
- the forecast: this test holds an uncommitted Forecast row for the same (patient, origin, model
  version), so the worker's INSERT waits on PostgreSQL's unique-index lock after the model ran;
- the send: the local FCM stub holds the HTTP response until the worker is dead.
Then a new worker starts. With acks_late the killed task was never acknowledged, so Redis hands
it to the new worker (visibility timeout shortened to 3 s for the test), and the work is done
exactly once: one Forecast for that origin, one push accepted by the stub.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from forecasting.models import Forecast, RiskAssessment
from forecasting.services import model_version_active
from glucoscope.patients.models import Role
from glucoscope.readings.models import PatientOutbox
from notifications import services as notification_services
from notifications.fcm_stub import FcmStub
from notifications.models import Notification, Status
from tests.conftest import bearer
from tests.factories import PatientFactory, UserFactory
from tests.faults.conftest import Workers, backends_waiting_to_insert, django_test_db_connect, forecast_key_held
from tests.integration.private_services import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def task_ids(log: str, task_name: str, event: str) -> list[str]:
    return re.findall(rf"{re.escape(task_name)}\[([0-9a-f-]+)\] {event}", log)


def test_a_worker_killed_mid_forecast_is_replaced_and_the_forecast_is_stored_once(fault_workers: Workers) -> None:
    worker = fault_workers.running()
    patient = PatientFactory()
    version = model_version_active()
    origin = (timezone.now() - timedelta(minutes=1)).replace(microsecond=0)
    body = [{"timestamp": (origin - timedelta(minutes=5 * i)).isoformat(), "value": 150 - i, "unit": "mg/dL"}
            for i in range(13)]
    table = Forecast._meta.db_table

    with forecast_key_held(patient_id=patient.pk, origin=origin, model_version_id=version.pk):
        response = bearer(patient.user).post("/api/v1/readings", data=json.dumps(body), content_type="application/json")
        assert response.status_code == 200 and response.json()["accepted"] == 13
        with django_test_db_connect(autocommit=True) as observer:
            wait_until(lambda: backends_waiting_to_insert(observer, table) > 0, timeout=90,
                       what="the worker to block inside the forecast's INSERT")
        [killed_task] = task_ids(worker.log(), "forecasting.forecast_patients", "received")
        worker.kill()
    # The killed worker's transaction never committed, and its task was never acknowledged.
    assert not Forecast.objects.filter(patient=patient).exists()

    replacement = fault_workers.start()
    wait_until(lambda: killed_task in task_ids(replacement.log(), "forecasting.forecast_patients", "succeeded"),
               timeout=60, what="the new worker to run the killed worker's forecast task again", interval=0.2)
    wait_until(lambda: not PatientOutbox.objects.filter(patient=patient).exists(), timeout=30,
               what="the outbox row to be released")
    forecasts = list(Forecast.objects.filter(patient=patient))
    assert len(forecasts) == 1
    assert forecasts[0].origin == origin and forecasts[0].status == "ok" and len(forecasts[0].points) == 24
    assert RiskAssessment.objects.filter(forecast__patient=patient).count() == 1


def test_a_worker_killed_mid_send_is_replaced_and_the_push_is_delivered_once(
    fault_workers: Workers, fcm_stub_server: FcmStub
) -> None:
    stub = fcm_stub_server
    worker = fault_workers.running()
    patient = PatientFactory()
    notification_services.device_register(user=patient.user, token="killed-sender-phone", platform="android")
    stub.state.release.clear()
    stub.state.hold_sends.set()
    held_before = stub.state.held
    try:
        notification = notification_services.care_message_send(
            patient=patient, author=UserFactory(role=Role.CLINICIAN), text="Please call the clinic."
        )
        wait_until(lambda: stub.state.held > held_before, timeout=60, what="the worker's push to reach the stub")
        row = Notification.objects.get(pk=notification.pk)
        assert (row.status, row.attempts) == (Status.SENDING, 1)
        [killed_task] = task_ids(worker.log(), "notifications.send", "received")
        worker.kill()
    finally:
        stub.state.hold_sends.clear()
        stub.state.release.set()
    wait_until(lambda: any(m.get("token") == "killed-sender-phone" for m in list(stub.state.abandoned)), timeout=10,
               what="the stub to see the killed sender's connection close")
    assert stub.state.delivered_to("killed-sender-phone") == []

    replacement = fault_workers.start()
    wait_until(lambda: killed_task in task_ids(replacement.log(), "notifications.send", "succeeded"),
               timeout=60, what="the new worker to run the killed worker's send task again", interval=0.2)
    [push] = stub.state.delivered_to("killed-sender-phone")
    assert push["data"]["notification_id"] == str(notification.pk)
    row = Notification.objects.get(pk=notification.pk)
    assert (row.status, row.attempts) == (Status.SENT, 2)
