"""The notification endpoints: happy paths and bad input (malformed, out of range, duplicate, unauthorised, oversized)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.utils import timezone

from api import notifications as views
from glucoscope.patients.models import CaregiverLink
from notifications import reminders, services
from notifications.models import DeviceToken, Kind, Notification, Reminder, Status
from tests.conftest import World

pytestmark = pytest.mark.django_db


def post(client, url: str, body: Any):  # type: ignore[no-untyped-def]
    return client.post(url, data=json.dumps(body), content_type="application/json")


def patch(client, url: str, body: Any):  # type: ignore[no-untyped-def]
    return client.patch(url, data=json.dumps(body), content_type="application/json")


def delete(client, url: str, body: Any = None):  # type: ignore[no-untyped-def]
    return client.delete(url, data=json.dumps(body), content_type="application/json")


def errors(response, field: str) -> list[str]:  # type: ignore[no-untyped-def]
    return response.json()[field]


# --- Devices -----------------------------------------------------------------------------------


def test_registering_a_token_is_idempotent_and_refreshes_last_seen(world: World) -> None:
    client = world.client("patient")
    body = {"token": "fcm-abc", "platform": "android", "app_version": "1.2.0", "locale": "es-ES"}
    first = post(client, "/api/v1/me/devices", body)
    second = post(client, "/api/v1/me/devices", body)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    device = DeviceToken.objects.get(token="fcm-abc")
    assert device.user == world.alice.user and device.locale == "es-ES"
    assert second.json()["last_seen_at"] >= first.json()["last_seen_at"]


def test_a_deactivated_token_registered_again_is_active_again(world: World) -> None:
    client = world.client("patient")
    post(client, "/api/v1/me/devices", {"token": "fcm-back", "platform": "ios"})
    services.devices_deactivate(token_ids=DeviceToken.objects.values_list("pk", flat=True), reason="UNREGISTERED")
    post(client, "/api/v1/me/devices", {"token": "fcm-back", "platform": "ios"})
    assert DeviceToken.objects.get(token="fcm-back").is_active


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"platform": "android"}, "token", services.ERR_TOKEN_REQUIRED),
    ({"token": "", "platform": "android"}, "token", services.ERR_TOKEN_REQUIRED),
    ({"token": 12, "platform": "android"}, "token", services.ERR_TOKEN_REQUIRED),
    ({"token": "x" * 4097, "platform": "android"}, "token", services.ERR_TOKEN_REQUIRED),
    ({"token": "t", "platform": "blackberry"}, "platform", services.ERR_PLATFORM),
    ({"token": "t", "platform": "ios", "app_version": "9" * 33}, "app_version", services.ERR_FIELD_TOO_LONG.format(limit=32)),
    ({"token": "t", "platform": "ios", "locale": ["en"]}, "locale", services.ERR_FIELD_TOO_LONG.format(limit=16)),
])
def test_bad_device_registrations_are_refused_field_by_field(world: World, body: dict[str, Any], field: str, message: str) -> None:
    response = post(world.client("patient"), "/api/v1/me/devices", body)
    assert response.status_code == 400 and errors(response, field) == [message]


def test_a_non_object_body_is_refused(world: World) -> None:
    response = post(world.client("patient"), "/api/v1/me/devices", ["token"])
    assert response.status_code == 400 and errors(response, "non_field_errors") == [views.ERR_OBJECT_BODY]
    malformed = world.client("patient").post("/api/v1/me/devices", data="{not json", content_type="application/json")
    assert malformed.status_code == 400


def test_an_oversized_body_is_refused_with_413(world: World, settings) -> None:  # type: ignore[no-untyped-def]
    settings.MAX_REQUEST_BODY_BYTES = 1024
    response = post(world.client("patient"), "/api/v1/me/devices", {"token": "x" * 2000, "platform": "android"})
    assert response.status_code == 413


def test_removing_a_token_only_works_on_your_own(world: World) -> None:
    post(world.client("patient"), "/api/v1/me/devices", {"token": "alice-phone", "platform": "android"})
    assert delete(world.client("other_patient"), "/api/v1/me/devices", {"token": "alice-phone"}).status_code == 404
    assert delete(world.client("patient"), "/api/v1/me/devices", {"token": "alice-phone"}).status_code == 204
    assert delete(world.client("patient"), "/api/v1/me/devices", {"token": "alice-phone"}).json()["detail"] == services.ERR_TOKEN_NOT_FOUND
    assert errors(delete(world.client("patient"), "/api/v1/me/devices", {}), "token") == [services.ERR_TOKEN_REQUIRED]


# --- Preferences -------------------------------------------------------------------------------


def test_preferences_round_trip(world: World) -> None:
    client = world.client("patient")
    body = {"quiet_start": "22:30", "quiet_end": "06:45", "low_threshold_mgdl": 75, "high_threshold_mgdl": 260,
            "disabled_kinds": ["tip", "rising_fast"], "followers": [world.caregiver.pk], "predicted_low_probability": 0.4,
            "tips_per_day": 2, "language": "es", "escalate_after_minutes": 10}
    response = patch(client, "/api/v1/me/notification-preferences", body)
    assert response.status_code == 200, response.content
    got = client.get("/api/v1/me/notification-preferences").json()
    assert got["quiet_start"] == "22:30" and got["quiet_end"] == "06:45" and got["followers"] == [world.caregiver.pk]
    assert got["disabled_kinds"] == ["rising_fast", "tip"] and got["language"] == "es" and got["time_zone"] == "Europe/London"
    assert got["bounds"] == {"low_threshold_mgdl": [65, 90], "high_threshold_mgdl": [180, 300]}


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"low_threshold_mgdl": 50}, "low_threshold_mgdl", services.ERR_THRESHOLD_BOUNDS.format(low=65, high=90)),
    ({"low_threshold_mgdl": "70"}, "low_threshold_mgdl", services.ERR_THRESHOLD_BOUNDS.format(low=65, high=90)),
    ({"high_threshold_mgdl": 400}, "high_threshold_mgdl", services.ERR_THRESHOLD_BOUNDS.format(low=180, high=300)),
    ({"predicted_low_probability": 1.5}, "predicted_low_probability", services.ERR_PROBABILITY),
    ({"predicted_low_probability": True}, "predicted_low_probability", services.ERR_PROBABILITY),
    ({"quiet_start": "25:00", "quiet_end": "07:00"}, "quiet_start", services.ERR_TIME),
    ({"quiet_start": "22:00"}, "quiet_start", services.ERR_QUIET_PAIR),
    ({"disabled_kinds": ["urgent_low"]}, "disabled_kinds", services.ERR_KINDS),
    ({"disabled_kinds": "tip"}, "disabled_kinds", services.ERR_KINDS),
    ({"followers": [999999]}, "followers", services.ERR_FOLLOWER),
    ({"escalate_after_minutes": 1}, "escalate_after_minutes", services.ERR_INTEGER.format(low=5, high=120)),
    ({"tips_per_day": 9}, "tips_per_day", services.ERR_INTEGER.format(low=0, high=2)),
    ({"language": "xx"}, "language", services.ERR_LANGUAGE.format(languages="en, es")),
    ({"is_admin": True}, "is_admin", services.ERR_UNKNOWN_FIELD),
])
def test_bad_preferences_are_refused_and_nothing_is_saved(world: World, body: dict[str, Any], field: str, message: str) -> None:
    response = patch(world.client("patient"), "/api/v1/me/notification-preferences", body)
    assert response.status_code == 400 and errors(response, field) == [message]
    assert services.preference_for(patient=world.alice).low_threshold_mgdl == 70


def test_a_follower_must_be_the_patients_own_caregiver(world: World) -> None:
    # bob's caregiver link is not alice's: alice cannot escalate to someone she did not invite.
    CaregiverLink.objects.create(patient=world.bob, caregiver=world.caregiver)
    CaregiverLink.objects.filter(patient=world.alice).update(revoked_at=timezone.now())
    response = patch(world.client("patient"), "/api/v1/me/notification-preferences", {"followers": [world.caregiver.pk]})
    assert errors(response, "followers") == [services.ERR_FOLLOWER]


def test_the_care_teams_bounds_limit_the_patients_thresholds(world: World) -> None:
    services.preference_bounds_update(patient=world.alice, bounds={"low_threshold_min": 80, "low_threshold_max": 100})
    assert services.preference_for(patient=world.alice).low_threshold_mgdl == 80  # pulled inside
    response = patch(world.client("patient"), "/api/v1/me/notification-preferences", {"low_threshold_mgdl": 75})
    assert errors(response, "low_threshold_mgdl") == [services.ERR_THRESHOLD_BOUNDS.format(low=80, high=100)]
    with pytest.raises(services.NotificationError):
        services.preference_bounds_update(patient=world.alice, bounds={"high_threshold_min": 140})


# --- Inbox, ack, feedback, receipts ------------------------------------------------------------


@pytest.fixture
def alice_notification(world: World, django_capture_on_commit_callbacks):  # type: ignore[no-untyped-def]
    def make(kind: str = Kind.LOW) -> Notification:
        with django_capture_on_commit_callbacks(execute=True):  # the send task runs, as after a real commit
            notification = services.notification_create(patient=world.alice, recipient=world.alice.user, kind=kind)
        assert notification is not None
        notification.refresh_from_db()
        return notification
    return make


def test_the_inbox_lists_only_what_was_sent_to_me(world: World, alice_notification) -> None:
    mine = alice_notification()
    services.notification_create(patient=world.bob, recipient=world.bob.user, kind=Kind.LOW)
    response = world.client("patient").get("/api/v1/me/notifications")
    assert [n["id"] for n in response.json()["results"]] == [mine.pk]
    assert response.json()["results"][0]["status"] == Status.NOT_CONFIGURED  # no FCM credentials in tests
    assert world.client("patient").get("/api/v1/me/notifications?limit=abc").status_code == 200


def test_ack_feedback_and_receipts_move_the_status_forward_only(world: World, alice_notification) -> None:
    notification = alice_notification(Kind.TIP)
    client = world.client("patient")
    url = f"/api/v1/me/notifications/{notification.pk}"
    assert post(client, f"{url}/receipt", {"event": "delivered"}).json()["status"] == "delivered"
    assert post(client, f"{url}/receipt", {"event": "opened"}).json()["status"] == "opened"
    acked = post(client, f"{url}/ack", None).json()
    assert acked["status"] == "acked" and acked["acked_at"]
    again = post(client, f"{url}/receipt", {"event": "delivered"}).json()
    assert again["status"] == "acked"  # never backwards
    assert post(client, f"{url}/feedback", {"feedback": "not_helpful"}).json()["feedback"] == "not_helpful"


@pytest.mark.parametrize(("endpoint", "body", "field", "message"), [
    ("feedback", {"feedback": "love it"}, "feedback", services.ERR_FEEDBACK),
    ("feedback", {}, "feedback", services.ERR_FEEDBACK),
    ("receipt", {"event": "acked"}, "event", services.ERR_RECEIPT),
    ("receipt", ["opened"], "non_field_errors", views.ERR_OBJECT_BODY),
])
def test_bad_feedback_and_receipts_are_refused(world: World, alice_notification, endpoint: str, body: Any, field: str, message: str) -> None:
    notification = alice_notification()
    response = post(world.client("patient"), f"/api/v1/me/notifications/{notification.pk}/{endpoint}", body)
    assert response.status_code == 400 and errors(response, field) == [message]


def test_someone_elses_notification_is_404(world: World, alice_notification) -> None:
    notification = alice_notification()
    for role in ("other_patient", "caregiver", "clinician"):
        response = post(world.client(role), f"/api/v1/me/notifications/{notification.pk}/ack", None)
        assert response.status_code == 404 and response.json()["detail"] == views.ERR_NOTIFICATION_NOT_FOUND
    assert post(world.client("patient"), "/api/v1/me/notifications/99999999/ack", None).status_code == 404


# --- Care team ---------------------------------------------------------------------------------


def test_the_care_team_sees_every_notification_with_status_and_response(world: World, alice_notification) -> None:
    notification = alice_notification()
    services.notification_ack(notification=notification)
    response = world.client("clinician").get(f"/api/v1/patients/{world.alice.pk}/notifications")
    [row] = response.json()["results"]
    assert row["id"] == notification.pk and row["status"] == "acked" and row["acked_at"]
    assert world.client("other_clinician").get(f"/api/v1/patients/{world.alice.pk}/notifications").status_code == 404


def test_a_care_team_message_arrives_as_a_notification(world: World) -> None:
    response = post(world.client("clinician"), f"/api/v1/patients/{world.alice.pk}/messages", {"text": "  See you Tuesday.  "})
    assert response.status_code == 201
    message = Notification.objects.get(pk=response.json()["id"])
    assert message.kind == Kind.CARE_MESSAGE and message.recipient == world.alice.user and message.created_by == world.clinician
    assert message.details["text"] == "See you Tuesday."
    assert message.title == "Message from your care team" and "Tuesday" not in message.body  # no content in the push


@pytest.mark.parametrize("body", [{"text": ""}, {"text": "   "}, {"text": "x" * 1001}, {"text": 5}, {}])
def test_bad_messages_are_refused(world: World, body: dict[str, Any]) -> None:
    response = post(world.client("clinician"), f"/api/v1/patients/{world.alice.pk}/messages", body)
    assert response.status_code == 400 and errors(response, "text") == [services.ERR_MESSAGE_TEXT.format(limit=1000)]


def test_only_the_care_team_may_message(world: World) -> None:
    for role in ("patient", "caregiver"):
        response = post(world.client(role), f"/api/v1/patients/{world.alice.pk}/messages", {"text": "hi"})
        assert response.status_code == 403 and response.json()["detail"] == views.ERR_MESSAGE_WRITE


# --- Reminders ---------------------------------------------------------------------------------


def test_reminders_crud_by_the_patient_and_the_care_team(world: World) -> None:
    url = f"/api/v1/patients/{world.alice.pk}/reminders"
    created = post(world.client("patient"), url, {"kind": "medication", "local_time": "08:30", "label": "Metformin",
                                                  "weekdays": [1, 2, 3, 4, 5]})
    assert created.status_code == 201, created.content
    by_team = post(world.client("clinician"), url, {"kind": "sensor_change", "local_time": "19:00", "every_n_days": 10})
    assert by_team.status_code == 201 and by_team.json()["created_by"] == world.clinician.pk
    listed = world.client("caregiver").get(url).json()["results"]
    assert [r["kind"] for r in listed] == ["medication", "sensor_change"]
    rid = created.json()["id"]
    changed = patch(world.client("clinician"), f"{url}/{rid}", {"local_time": "09:00", "is_active": False})
    assert changed.status_code == 200 and changed.json()["local_time"] == "09:00" and not changed.json()["is_active"]
    assert delete(world.client("patient"), f"{url}/{rid}").status_code == 204
    assert delete(world.client("patient"), f"{url}/{rid}").status_code == 204  # idempotent
    assert patch(world.client("patient"), f"{url}/{rid}", {"local_time": "10:00"}).status_code == 404
    assert [r["kind"] for r in world.client("patient").get(url).json()["results"]] == ["sensor_change"]
    assert Reminder.objects.get(pk=rid).deleted_at is not None  # kept for the record


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"local_time": "08:00"}, "kind", reminders.ERR_KIND),
    ({"kind": "nap", "local_time": "08:00"}, "kind", reminders.ERR_KIND),
    ({"kind": "insulin"}, "local_time", reminders.ERR_TIME),
    ({"kind": "insulin", "local_time": "8 am"}, "local_time", reminders.ERR_TIME),
    ({"kind": "insulin", "local_time": "08:00", "weekdays": [0]}, "weekdays", reminders.ERR_WEEKDAYS),
    ({"kind": "insulin", "local_time": "08:00", "weekdays": "mon"}, "weekdays", reminders.ERR_WEEKDAYS),
    ({"kind": "insulin", "local_time": "08:00", "every_n_days": 0}, "every_n_days", reminders.ERR_EVERY_N_DAYS),
    ({"kind": "insulin", "local_time": "08:00", "every_n_days": 3, "weekdays": [1]}, "every_n_days", reminders.ERR_SCHEDULE),
    ({"kind": "insulin", "local_time": "08:00", "label": "x" * 121}, "label", reminders.ERR_LABEL),
    ({"kind": "insulin", "local_time": "08:00", "start_date": "tomorrow"}, "start_date", reminders.ERR_START_DATE),
    ({"kind": "insulin", "local_time": "08:00", "owner": 1}, "owner", reminders.ERR_UNKNOWN_FIELD),
])
def test_bad_reminders_are_refused(world: World, body: dict[str, Any], field: str, message: str) -> None:
    response = post(world.client("patient"), f"/api/v1/patients/{world.alice.pk}/reminders", body)
    assert response.status_code == 400 and errors(response, field) == [message]


def test_a_patient_has_at_most_50_reminders(world: World) -> None:
    url = f"/api/v1/patients/{world.alice.pk}/reminders"
    for _ in range(reminders.MAX_REMINDERS_PER_PATIENT):
        assert post(world.client("patient"), url, {"kind": "glucose_check", "local_time": "12:00"}).status_code == 201
    response = post(world.client("patient"), url, {"kind": "glucose_check", "local_time": "12:00"})
    assert errors(response, "non_field_errors") == [reminders.ERR_TOO_MANY.format(limit=50)]


def test_caregivers_read_reminders_but_cannot_change_them(world: World) -> None:
    url = f"/api/v1/patients/{world.alice.pk}/reminders"
    response = post(world.client("caregiver"), url, {"kind": "glucose_check", "local_time": "12:00"})
    assert response.status_code == 403 and response.json()["detail"] == views.ERR_REMINDER_WRITE
    assert world.client("caregiver").get(url).status_code == 200


def test_a_reminder_of_another_patient_is_404(world: World) -> None:
    created = post(world.client("other_patient"), f"/api/v1/patients/{world.bob.pk}/reminders",
                   {"kind": "glucose_check", "local_time": "12:00"}).json()
    response = patch(world.client("patient"), f"/api/v1/patients/{world.alice.pk}/reminders/{created['id']}", {"local_time": "13:00"})
    assert response.status_code == 404 and response.json()["detail"] == views.ERR_REMINDER_NOT_FOUND


def test_the_care_team_sets_the_bounds_and_the_patients_threshold_follows(world: World) -> None:
    url = f"/api/v1/patients/{world.alice.pk}/notification-preferences"
    response = patch(world.client("clinician"), url, {"low_threshold_min": 75, "low_threshold_max": 85})
    assert response.status_code == 200 and response.json()["bounds"]["low_threshold_mgdl"] == [75, 85]
    assert response.json()["low_threshold_mgdl"] == 75  # pulled inside the new bounds
    assert world.client("caregiver").get(url).json()["bounds"]["low_threshold_mgdl"] == [75, 85]


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"low_threshold_min": 90, "low_threshold_max": 80}, "bounds", services.ERR_BOUNDS),
    ({"high_threshold_min": 320}, "bounds", services.ERR_BOUNDS),
    ({"high_threshold_min": 100}, "high_threshold_min", services.ERR_INTEGER.format(low=150, high=400)),
    ({"low_threshold_min": 10}, "low_threshold_min", services.ERR_INTEGER.format(low=55, high=100)),
    ({"low_threshold_min": "70"}, "low_threshold_min", services.ERR_INTEGER.format(low=55, high=100)),
    ({"low_threshold_mgdl": 70}, "low_threshold_mgdl", services.ERR_UNKNOWN_FIELD),
])
def test_bad_bounds_are_refused(world: World, body: dict[str, Any], field: str, message: str) -> None:
    response = patch(world.client("clinician"), f"/api/v1/patients/{world.alice.pk}/notification-preferences", body)
    assert response.status_code == 400 and errors(response, field) == [message]


def test_only_the_care_team_sets_bounds(world: World) -> None:
    url = f"/api/v1/patients/{world.alice.pk}/notification-preferences"
    for role in ("patient", "caregiver"):
        response = patch(world.client(role), url, {"low_threshold_min": 60})
        assert response.status_code == 403 and response.json()["detail"] == views.ERR_BOUNDS_WRITE
    assert patch(world.client("other_clinician"), url, {"low_threshold_min": 60}).status_code == 404
