"""End to end with a real Celery worker, Redis, PostgreSQL and the stub FCM server.

Readings falling towards a low go through ingest → forecast (a predicted_low event) → the alert
rules → one notification row → the send task → firebase-admin → the stub. The push arrives
exactly once for the live token, even when more readings arrive and the send task is delivered
again, and the dead token is deactivated.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from glucoscope.patients.models import Role
from notifications import services
from notifications.fcm_stub import FcmStub
from notifications.models import DeviceToken, Kind, Notification, Status
from tests.conftest import bearer
from tests.factories import PatientFactory, UserFactory
from tests.integration.conftest import wait_for
from tests.integration.private_services import PrivateRedis

pytestmark = pytest.mark.integration


@pytest.fixture
def stub_for_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[FcmStub]:
    """The stub, and the environment the worker process starts with (it reads settings from it)."""
    with FcmStub() as stub:
        monkeypatch.setenv("FIREBASE_CREDENTIALS_FILE", stub.credentials_file)
        monkeypatch.setenv("FCM_ENDPOINT", stub.url)
        # The shipped model is cautious on a steady fall (P(<70 in 30 min) ≈ 0.3 here); lower the event threshold well below that
        # so the forecasting stage raises its predicted_low event for this patient.
        monkeypatch.setenv("PREDICTED_LOW_RISK_THRESHOLD", "0.15")
        yield stub


@pytest.fixture
def notify_worker(stub_for_worker: FcmStub, celery_worker_process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    return celery_worker_process


def post_readings(patient, values: list[float], *, end=None):  # type: ignore[no-untyped-def]
    end = end or timezone.now()
    body = [{"timestamp": (end - timedelta(minutes=5 * (len(values) - 1 - i))).isoformat(), "value": v, "unit": "mg/dL"}
            for i, v in enumerate(values)]
    response = bearer(patient.user).post("/api/v1/readings", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 200, response.content
    return response


def test_falling_readings_push_one_predicted_low_to_the_device_and_prune_the_dead_token(
    notify_worker: subprocess.Popen[bytes], stub_for_worker: FcmStub
) -> None:
    from forecasting.models import ForecastEvent
    from notifications.tasks import send_notifications

    stub = stub_for_worker
    patient = PatientFactory()
    services.preference_update(patient=patient, changes={"predicted_low_probability": 0.15})
    services.device_register(user=patient.user, token="live-phone-token", platform="android")
    services.device_register(user=patient.user, token="dead-phone-token", platform="ios")
    now = timezone.now()
    post_readings(patient, [180.0 - 8 * i for i in range(13)], end=now - timedelta(minutes=5))  # 180 → 84 mg/dL in an hour

    wait_for(lambda: stub.state.delivered_to("live-phone-token"), timeout=120, what="the predicted-low push at the stub")
    [message] = stub.state.delivered_to("live-phone-token")
    assert message["data"]["kind"] == Kind.PREDICTED_LOW
    assert message["notification"]["body"] == "Open GlucoScope for details."  # no glucose values in the push
    notification = Notification.objects.get(pk=int(message["data"]["notification_id"]))
    wait_for(lambda: Notification.objects.get(pk=notification.pk).status == Status.SENT, what="the row to be sent")
    notification.refresh_from_db()
    event = ForecastEvent.objects.get(patient=patient, kind="predicted_low")
    assert notification.details["forecast_event_id"] == event.pk and notification.recipient == patient.user
    wait_for(lambda: not DeviceToken.objects.get(token="dead-phone-token").is_active, what="the dead token to be pruned")
    assert DeviceToken.objects.get(token="dead-phone-token").deactivation_reason == "UNREGISTERED"
    assert DeviceToken.objects.get(token="live-phone-token").is_active

    # The fall continues: the same episode, so no new alert; and the send task delivered again pushes nothing.
    post_readings(patient, [80.0], end=now)
    from forecasting.models import Forecast

    wait_for(lambda: Forecast.objects.filter(patient=patient, origin__gte=now - timedelta(seconds=1)).exists(),
             timeout=60, what="the forecast from the new reading")
    send_notifications.apply_async(args=[[notification.pk]])
    log_path = notify_worker.log_path  # type: ignore[attr-defined]
    wait_for(lambda: log_path.read_text().count("Task notifications.send[") >= 4, timeout=30,
             what="the redelivered send task to finish")  # received + succeeded, twice
    wait_for(lambda: log_path.read_text().count("Task notifications.evaluate_patients[") >= 4, timeout=30,
             what="the rules to run on the new reading")
    assert len(stub.state.delivered_to("live-phone-token")) == 1
    assert Notification.objects.filter(patient=patient).exclude(kind=Kind.PREDICTED_LOW).filter(status=Status.SENT).count() == 0
    assert Notification.objects.filter(patient=patient, kind=Kind.PREDICTED_LOW).count() == 1


def test_a_notification_created_while_redis_is_down_is_sent_by_the_sweeper_when_it_returns(
    private_redis: PrivateRedis, stub_for_worker: FcmStub, celery_worker_private_redis: subprocess.Popen[bytes]
) -> None:
    # A private Redis: stopping the shared one would break every other test run using it.
    patient = PatientFactory()
    services.device_register(user=patient.user, token="outage-phone", platform="android")
    private_redis.stop()
    try:
        # Committed (transactional_db), so the publish runs on commit and fails: the row must survive it.
        clinician = UserFactory(role=Role.CLINICIAN)
        notification = services.care_message_send(patient=patient, author=clinician, text="Call the clinic.")
        assert Notification.objects.get(pk=notification.pk).status == Status.QUEUED
    finally:
        private_redis.start()

    def sweep() -> bool:
        try:
            services.notifications_sweep(now=timezone.now() + timedelta(minutes=1))
        except Exception:  # the first publish after a restart may meet a stale pooled connection
            return False
        return bool(stub_for_worker.state.delivered_to("outage-phone"))

    wait_for(sweep, timeout=60, what="the sweeper and worker to send the held notification")
    wait_for(lambda: Notification.objects.get(pk=notification.pk).status == Status.SENT, what="the row to be sent")
    assert len(stub_for_worker.state.delivered_to("outage-phone")) == 1
