"""Delivery: rows are claimed atomically, pushed once, dead tokens pruned, transient failures re-queued."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from notifications import services
from notifications.fcm import FcmTransport
from notifications.fcm_stub import FcmStub
from notifications.models import DeviceToken, Kind, Notification, Status
from tests.factories import PatientFactory

pytestmark = pytest.mark.django_db


def make_notification(patient, kind: str = Kind.LOW, **kwargs) -> Notification:  # type: ignore[no-untyped-def]
    notification = services.notification_create(patient=patient, recipient=patient.user, kind=kind, **kwargs)
    assert notification is not None
    return notification


def register(patient, token: str) -> DeviceToken:  # type: ignore[no-untyped-def]
    device, _ = services.device_register(user=patient.user, token=token, platform="android")
    return device


def test_a_notification_is_pushed_once_even_when_the_task_is_delivered_twice(
    transport: FcmTransport, fcm_stub: FcmStub, django_capture_on_commit_callbacks
) -> None:
    patient = PatientFactory()
    register(patient, "phone-1")
    with django_capture_on_commit_callbacks(execute=False):  # the task is what we run by hand here
        notification = make_notification(patient)
    first = services.notifications_deliver(notification_ids=[notification.pk], transport=transport)
    second = services.notifications_deliver(notification_ids=[notification.pk], transport=transport)
    assert (first.claimed, first.sent, second.claimed) == (1, 1, 0)
    assert len(fcm_stub.state.delivered_to("phone-1")) == 1
    notification.refresh_from_db()
    assert notification.status == Status.SENT and notification.attempts == 1 and notification.sent_at is not None


def test_the_push_carries_no_glucose_values_by_default(transport: FcmTransport, fcm_stub: FcmStub, django_capture_on_commit_callbacks) -> None:
    patient = PatientFactory()
    register(patient, "phone-2")
    with django_capture_on_commit_callbacks(execute=False):
        notification = make_notification(patient, details={"mgdl": 64.0, "threshold": 70, "at": "x"})
    services.notifications_deliver(notification_ids=[notification.pk], transport=transport)
    [message] = fcm_stub.state.delivered_to("phone-2")
    # Only ids are numbers in the push; what the lock screen shows has none, and no value field travels.
    # (A check for "64" anywhere in the message failed whenever an id contained 64.)
    assert not any(character.isdigit() for character in str(message["notification"]))
    assert set(message["data"]) == {"notification_id", "kind", "patient_id"}
    assert message["data"] == {"notification_id": str(notification.pk), "kind": "low", "patient_id": str(patient.pk)}


def test_push_include_details_puts_the_value_in_the_text(settings, transport: FcmTransport, fcm_stub: FcmStub,
                                                         django_capture_on_commit_callbacks) -> None:
    settings.PUSH_INCLUDE_DETAILS = True
    patient = PatientFactory()
    register(patient, "phone-3")
    with django_capture_on_commit_callbacks(execute=False):
        notification = make_notification(patient, details={"mgdl": 64.0, "threshold": 70})
    services.notifications_deliver(notification_ids=[notification.pk], transport=transport)
    [message] = fcm_stub.state.delivered_to("phone-3")
    assert message["notification"]["body"] == "Glucose 64 mg/dL, under 70."


def test_a_dead_token_is_deactivated_and_the_live_one_still_gets_the_push(
    transport: FcmTransport, fcm_stub: FcmStub, django_capture_on_commit_callbacks
) -> None:
    patient = PatientFactory()
    live, dead = register(patient, "phone-live"), register(patient, "dead-phone")
    with django_capture_on_commit_callbacks(execute=False):
        notification = make_notification(patient)
    report = services.notifications_deliver(notification_ids=[notification.pk], transport=transport)
    assert report.tokens_deactivated == 1
    dead.refresh_from_db()
    live.refresh_from_db()
    assert not dead.is_active and dead.deactivation_reason == "UNREGISTERED" and live.is_active
    notification.refresh_from_db()
    assert notification.status == Status.SENT and notification.sent_token_ids == [live.pk]


def test_only_dead_tokens_fail_the_notification_with_the_reason(transport: FcmTransport, django_capture_on_commit_callbacks) -> None:
    patient = PatientFactory()
    register(patient, "mismatch-only")
    with django_capture_on_commit_callbacks(execute=False):
        notification = make_notification(patient)
    services.notifications_deliver(notification_ids=[notification.pk], transport=transport)
    notification.refresh_from_db()
    assert notification.status == Status.FAILED and notification.reason.startswith("SENDER_ID_MISMATCH")


def test_no_device_fails_with_a_reason(transport: FcmTransport, django_capture_on_commit_callbacks) -> None:
    patient = PatientFactory()
    with django_capture_on_commit_callbacks(execute=False):
        notification = make_notification(patient)
    services.notifications_deliver(notification_ids=[notification.pk], transport=transport)
    notification.refresh_from_db()
    assert (notification.status, notification.reason) == (Status.FAILED, services.ERR_NO_DEVICES)


def test_quota_beyond_the_transport_retries_requeues_with_backoff_and_sends_later(
    fcm_stub: FcmStub, django_capture_on_commit_callbacks
) -> None:
    fcm_stub.state.quota_failures = 2
    transport = FcmTransport(credentials_file=fcm_stub.credentials_file, endpoint=fcm_stub.url, max_attempts=1, sleep=lambda s: None)
    patient = PatientFactory()
    register(patient, "quota-phone")
    with django_capture_on_commit_callbacks(execute=False):
        notification = make_notification(patient)
    report = services.notifications_deliver(notification_ids=[notification.pk], transport=transport)
    assert report.requeued == 1
    notification.refresh_from_db()
    assert notification.status == Status.QUEUED and notification.reason == "retrying: QUOTA_EXCEEDED"
    assert notification.send_after > timezone.now()
    # Not due yet: nothing is claimed.
    assert services.notifications_deliver(notification_ids=[notification.pk], transport=transport).claimed == 0
    later = notification.send_after + timedelta(seconds=1)
    services.notifications_deliver(notification_ids=[notification.pk], transport=transport, now=later)  # quota again
    services.notifications_deliver(notification_ids=[notification.pk], transport=transport, now=later + timedelta(hours=1))
    notification.refresh_from_db()
    assert notification.status == Status.SENT and notification.attempts == 3
    assert len(fcm_stub.state.delivered_to("quota-phone")) == 1


def test_without_credentials_the_row_is_recorded_as_not_configured(settings, django_capture_on_commit_callbacks) -> None:
    settings.FIREBASE_CREDENTIALS_FILE = ""
    patient = PatientFactory()
    register(patient, "phone-nc")
    with django_capture_on_commit_callbacks(execute=True):  # eager: the task runs on commit
        notification = make_notification(patient)
    notification.refresh_from_db()
    assert notification.status == Status.NOT_CONFIGURED


def test_the_settings_transport_sends_through_the_task(fcm_settings, fcm_stub: FcmStub, django_capture_on_commit_callbacks) -> None:
    patient = PatientFactory()
    register(patient, "phone-task")
    with django_capture_on_commit_callbacks(execute=True):
        notification = make_notification(patient)
    notification.refresh_from_db()
    assert notification.status == Status.SENT
    assert len(fcm_stub.state.delivered_to("phone-task")) == 1


def test_the_sweeper_sends_rows_whose_publish_was_lost_and_revives_dead_senders(
    transport: FcmTransport, django_capture_on_commit_callbacks
) -> None:
    patient = PatientFactory()
    register(patient, "phone-sweep")
    with django_capture_on_commit_callbacks(execute=False):  # as if Redis was down at commit
        lost = make_notification(patient)
        stuck = make_notification(patient, kind=Kind.HIGH)
    Notification.objects.filter(pk=stuck.pk).update(status=Status.SENDING, claimed_at=timezone.now() - timedelta(minutes=10), attempts=1)
    later = timezone.now() + timedelta(minutes=1)
    with django_capture_on_commit_callbacks(execute=False):
        due = services.notifications_sweep(now=later)
    assert set(due) == {lost.pk, stuck.pk}
    assert Notification.objects.get(pk=stuck.pk).status == Status.QUEUED


def test_a_sender_that_died_on_its_last_attempt_is_failed_not_retried_forever(settings) -> None:
    patient = PatientFactory()
    notification = Notification.objects.create(
        patient=patient, recipient=patient.user, kind=Kind.LOW, title="t", status=Status.SENDING,
        send_after=timezone.now(), claimed_at=timezone.now() - timedelta(minutes=10),
        attempts=settings.NOTIFICATION_MAX_SEND_ATTEMPTS,
    )
    services.notifications_sweep()
    notification.refresh_from_db()
    assert (notification.status, notification.reason) == (Status.FAILED, services.ERR_INTERRUPTED)


def test_a_dedupe_key_creates_the_row_once() -> None:
    patient = PatientFactory()
    first = services.notification_create(patient=patient, recipient=patient.user, kind=Kind.LOW, dedupe_key="k1")
    again = services.notification_create(patient=patient, recipient=patient.user, kind=Kind.LOW, dedupe_key="k1")
    assert first is not None and again is None
    assert Notification.objects.filter(dedupe_key="k1").count() == 1


def test_an_fcm_outage_delays_the_push_but_loses_nothing(tmp_path, fcm_stub: FcmStub, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    with FcmStub(directory=tmp_path) as gone:
        down = FcmTransport(credentials_file=gone.credentials_file, endpoint=gone.url, timeout_seconds=1, max_attempts=2,
                            sleep=lambda s: None)
    patient = PatientFactory()
    register(patient, "phone-outage")
    with django_capture_on_commit_callbacks(execute=False):
        notification = make_notification(patient, kind=Kind.URGENT_LOW)
    assert services.notifications_deliver(notification_ids=[notification.pk], transport=down).requeued == 1
    notification.refresh_from_db()
    assert notification.status == Status.QUEUED and notification.reason.startswith("retrying: ")
    up = FcmTransport(credentials_file=fcm_stub.credentials_file, endpoint=fcm_stub.url, sleep=lambda s: None)
    services.notifications_deliver(notification_ids=[notification.pk], transport=up, now=timezone.now() + timedelta(hours=1))
    notification.refresh_from_db()
    assert notification.status == Status.SENT and len(fcm_stub.state.delivered_to("phone-outage")) == 1
