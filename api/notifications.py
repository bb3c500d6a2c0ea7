"""Notification endpoints: device tokens, preferences, history, acknowledgement and feedback,
reminders (patient and care team), and care-team messages.

Thin views: parse, call a service or selector, shape JSON by hand. Access:
- `me/...` acts on the caller's own devices, preferences and received notifications; a
  notification addressed to someone else is 404, so its existence does not leak.
- `patients/{id}/...` goes through `patient_get_for_user` (404 outside scope). Reading is for
  everyone who may read the patient; writing reminders is for the patient and their care team
  (caregivers read only); messages are for the care team.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.permissions import IsPerson
from api.sharing import IsPatient
from glucoscope.audit.context import audit_note
from glucoscope.patients.models import Patient, Role, User
from glucoscope.patients.selectors import patient_get_for_user
from notifications import reminders, selectors, services
from notifications.models import Notification, Preference, Reminder

ERR_NOTIFICATION_NOT_FOUND = "Notification not found."
ERR_REMINDER_NOT_FOUND = "Reminder not found."
ERR_OBJECT_BODY = "Send a JSON object."
ERR_REMINDER_WRITE = "Only the patient and their care team can change reminders."
ERR_MESSAGE_WRITE = "Only the patient's care team can send them messages."
ERR_BOUNDS_WRITE = "Only the patient's care team sets the bounds of their alert thresholds."


class IsPatientAccount(IsPatient):
    message = "Notification preferences belong to the patient's own account."


def _user(request: Request) -> User:
    return request.user  # type: ignore[return-value]


def _body(request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise ValidationError({"non_field_errors": [ERR_OBJECT_BODY]})
    return request.data


def _invalid(exc: services.NotificationError) -> ValidationError:
    return ValidationError({exc.field: [exc.message]})


def notification_json(notification: Notification) -> dict[str, Any]:
    return {
        "id": notification.pk,
        "patient": notification.patient_id,
        "recipient": notification.recipient_id,
        "kind": notification.kind,
        "status": notification.status,
        "reason": notification.reason,
        "title": notification.title,
        "body": notification.body,
        "details": notification.details,
        "created_at": notification.created_at.isoformat(),
        "sent_at": notification.sent_at.isoformat() if notification.sent_at else None,
        "delivered_at": notification.delivered_at.isoformat() if notification.delivered_at else None,
        "opened_at": notification.opened_at.isoformat() if notification.opened_at else None,
        "acked_at": notification.acked_at.isoformat() if notification.acked_at else None,
        "feedback": notification.feedback or None,
        "escalated_at": notification.escalated_at.isoformat() if notification.escalated_at else None,
        "parent": notification.parent_id,
    }


def preference_json(preference: Preference) -> dict[str, Any]:
    return {
        "quiet_start": preference.quiet_start.strftime("%H:%M") if preference.quiet_start else None,
        "quiet_end": preference.quiet_end.strftime("%H:%M") if preference.quiet_end else None,
        "disabled_kinds": preference.disabled_kinds,
        "low_threshold_mgdl": preference.low_threshold_mgdl,
        "high_threshold_mgdl": preference.high_threshold_mgdl,
        "predicted_low_probability": preference.predicted_low_probability,
        "bounds": {
            "low_threshold_mgdl": [preference.low_threshold_min, preference.low_threshold_max],
            "high_threshold_mgdl": [preference.high_threshold_min, preference.high_threshold_max],
        },
        "followers": sorted(preference.followers.values_list("pk", flat=True)),
        "escalate_after_minutes": preference.escalate_after_minutes,
        "tips_per_day": preference.tips_per_day,
        "language": preference.language,
        "time_zone": preference.patient.time_zone,
    }


def reminder_json(reminder: Reminder) -> dict[str, Any]:
    return {
        "id": reminder.pk,
        "patient": reminder.patient_id,
        "kind": reminder.kind,
        "label": reminder.label,
        "local_time": reminder.local_time.strftime("%H:%M"),
        "weekdays": reminder.weekdays,
        "every_n_days": reminder.every_n_days,
        "start_date": reminder.start_date.isoformat(),
        "is_active": reminder.is_active,
        "next_fire_at": reminder.next_fire_at.isoformat() if reminder.is_active else None,
        "created_by": reminder.created_by_id,
        "deleted_at": reminder.deleted_at.isoformat() if reminder.deleted_at else None,
    }


ObjectResponse = inline_serializer("NotificationObject", {"id": serializers.IntegerField()})
ListResponse = inline_serializer("NotificationList", {"results": serializers.ListField()})
DeviceResponse = inline_serializer("Device", {"id": serializers.IntegerField(), "platform": serializers.CharField()})


# --- Devices ---------------------------------------------------------------------------------


class MyDevicesApi(APIView):
    openapi_body_methods = ("DELETE",)  # DELETE carries the token in its body (api/schema.py)
    audit_self = True  # a patient's push tokens are part of their record (glucoscope/audit/middleware.py)
    permission_classes: list[type[BasePermission]] = [IsPerson]

    @extend_schema(
        request=inline_serializer("DeviceRegister", {
            "token": serializers.CharField(), "platform": serializers.ChoiceField(["android", "ios", "web"]),
            "app_version": serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=32),
            "locale": serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=16),
        }),
        # 201 for a new token, 200 when the token was already registered (re-registration is idempotent).
        responses={200: DeviceResponse, 201: DeviceResponse},
    )
    def post(self, request: Request) -> Response:
        data = _body(request)
        try:
            device, created = services.device_register(
                user=_user(request), token=data.get("token"), platform=data.get("platform"),
                app_version=data.get("app_version", ""), locale=data.get("locale", ""),
            )
        except services.NotificationError as exc:
            raise _invalid(exc) from None
        body = {"id": device.pk, "platform": device.platform, "app_version": device.app_version, "locale": device.locale,
                "last_seen_at": device.last_seen_at.isoformat()}
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(request=inline_serializer("DeviceRemove", {"token": serializers.CharField()}), responses={204: None, 404: None})
    def delete(self, request: Request) -> Response:
        try:
            removed = services.device_remove(user=_user(request), token=_body(request).get("token"))
        except services.NotificationError as exc:
            raise _invalid(exc) from None
        if not removed:
            raise NotFound(services.ERR_TOKEN_NOT_FOUND)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Preferences -----------------------------------------------------------------------------


class MyNotificationPreferencesApi(APIView):
    audit_self = True
    permission_classes: list[type[BasePermission]] = [IsPatientAccount]

    @extend_schema(responses=inline_serializer("NotificationPreferences", {"low_threshold_mgdl": serializers.IntegerField()}))
    def get(self, request: Request) -> Response:
        return Response(preference_json(services.preference_for(patient=_user(request).patient)))

    @extend_schema(request=inline_serializer("NotificationPreferencesPatch", {
        "quiet_start": serializers.CharField(required=False), "quiet_end": serializers.CharField(required=False),
        "disabled_kinds": serializers.ListField(required=False), "low_threshold_mgdl": serializers.IntegerField(required=False),
        "high_threshold_mgdl": serializers.IntegerField(required=False),
        "predicted_low_probability": serializers.FloatField(required=False),
        "followers": serializers.ListField(required=False), "escalate_after_minutes": serializers.IntegerField(required=False),
        "tips_per_day": serializers.IntegerField(required=False), "language": serializers.CharField(required=False),
    }), responses=inline_serializer("NotificationPreferencesOut", {"low_threshold_mgdl": serializers.IntegerField()}))
    def patch(self, request: Request) -> Response:
        try:
            preference = services.preference_update(patient=_user(request).patient, changes=_body(request))
        except services.NotificationError as exc:
            raise _invalid(exc) from None
        return Response(preference_json(preference))


# --- The caller's notifications ------------------------------------------------------------


class NotificationPagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 200


class MyNotificationsApi(APIView):
    audit_self = True
    permission_classes: list[type[BasePermission]] = [IsPerson]

    @extend_schema(responses=ListResponse)
    def get(self, request: Request) -> Response:
        paginator = NotificationPagination()
        page = paginator.paginate_queryset(selectors.notifications_received(user=_user(request)), request, view=self)
        # Caregivers and clinicians receive notifications about other people: each is a read of that patient.
        audit_note(patient_ids={n.patient_id for n in page or []})
        return paginator.get_paginated_response([notification_json(n) for n in page or []])


def _received(request: Request, notification_id: int) -> Notification:
    notification = selectors.notifications_received(user=_user(request)).filter(pk=notification_id).first()
    if notification is None:
        raise NotFound(ERR_NOTIFICATION_NOT_FOUND)
    audit_note(patient_ids=[notification.patient_id])
    return notification


class MyNotificationAckApi(APIView):
    permission_classes: list[type[BasePermission]] = [IsPerson]

    @extend_schema(request=None, responses=ObjectResponse)
    def post(self, request: Request, notification_id: int) -> Response:
        return Response(notification_json(services.notification_ack(notification=_received(request, notification_id))))


class MyNotificationFeedbackApi(APIView):
    permission_classes: list[type[BasePermission]] = [IsPerson]

    @extend_schema(request=inline_serializer("NotificationFeedback", {
        "feedback": serializers.ChoiceField(["helpful", "not_helpful", "dismissed"])}), responses=ObjectResponse)
    def post(self, request: Request, notification_id: int) -> Response:
        notification = _received(request, notification_id)
        try:
            notification = services.notification_feedback(notification=notification, feedback=_body(request).get("feedback"))
        except services.NotificationError as exc:
            raise _invalid(exc) from None
        return Response(notification_json(notification))


class MyNotificationReceiptApi(APIView):
    """The app reports that a push arrived (`delivered`) or was tapped (`opened`)."""

    permission_classes: list[type[BasePermission]] = [IsPerson]

    @extend_schema(request=inline_serializer("NotificationReceipt", {
        "event": serializers.ChoiceField(["delivered", "opened"])}), responses=ObjectResponse)
    def post(self, request: Request, notification_id: int) -> Response:
        notification = _received(request, notification_id)
        try:
            notification = services.notification_receipt(notification=notification, event=_body(request).get("event"))
        except services.NotificationError as exc:
            raise _invalid(exc) from None
        return Response(notification_json(notification))


# --- Care team: a patient's notifications and messages -----------------------------------------


class PatientNotificationsApi(APIView):
    """Every notification about the patient, with its delivery status and the response (care team audit)."""

    permission_classes: list[type[BasePermission]] = [IsPerson]

    @extend_schema(responses=ListResponse)
    def get(self, request: Request, patient_id: int) -> Response:
        patient = patient_get_for_user(user=_user(request), patient_id=patient_id)
        paginator = NotificationPagination()
        page = paginator.paginate_queryset(selectors.notifications_about(patient=patient), request, view=self)
        return paginator.get_paginated_response([notification_json(n) for n in page or []])


class PatientMessagesApi(APIView):
    permission_classes: list[type[BasePermission]] = [IsPerson]

    @extend_schema(request=inline_serializer("CareMessage", {"text": serializers.CharField()}), responses={201: ObjectResponse})
    def post(self, request: Request, patient_id: int) -> Response:
        patient = patient_get_for_user(user=_user(request), patient_id=patient_id)
        if _user(request).role != Role.CLINICIAN:
            raise PermissionDenied(ERR_MESSAGE_WRITE)
        try:
            notification = services.care_message_send(patient=patient, author=_user(request), text=_body(request).get("text"))
        except services.NotificationError as exc:
            raise _invalid(exc) from None
        return Response(notification_json(notification), status=status.HTTP_201_CREATED)


class PatientNotificationPreferencesApi(APIView):
    """The care team reads a patient's notification settings and sets the bounds of their thresholds."""

    permission_classes: list[type[BasePermission]] = [IsPerson]

    @extend_schema(responses=inline_serializer("PatientNotificationPreferences", {"bounds": serializers.DictField()}))
    def get(self, request: Request, patient_id: int) -> Response:
        patient = patient_get_for_user(user=_user(request), patient_id=patient_id)
        return Response(preference_json(services.preference_for(patient=patient)))

    @extend_schema(request=inline_serializer("NotificationBounds", {
        name: serializers.IntegerField(required=False) for name in sorted(services.BOUND_FIELDS)
    }), responses=inline_serializer("PatientNotificationPreferencesOut", {"bounds": serializers.DictField()}))
    def patch(self, request: Request, patient_id: int) -> Response:
        patient = patient_get_for_user(user=_user(request), patient_id=patient_id)
        if _user(request).role != Role.CLINICIAN:
            raise PermissionDenied(ERR_BOUNDS_WRITE)
        try:
            preference = services.preference_bounds_update(patient=patient, bounds=_body(request))
        except services.NotificationError as exc:
            raise _invalid(exc) from None
        return Response(preference_json(preference))


# --- Reminders ---------------------------------------------------------------------------------


def _reminder_writer(request: Request, patient_id: int) -> Patient:
    patient = patient_get_for_user(user=_user(request), patient_id=patient_id)
    if _user(request).role not in (Role.PATIENT, Role.CLINICIAN):
        raise PermissionDenied(ERR_REMINDER_WRITE)
    return patient


class PatientRemindersApi(APIView):
    permission_classes: list[type[BasePermission]] = [IsPerson]

    @extend_schema(responses=ListResponse)
    def get(self, request: Request, patient_id: int) -> Response:
        patient = patient_get_for_user(user=_user(request), patient_id=patient_id)
        return Response({"results": [reminder_json(r) for r in selectors.reminders_for(patient=patient)]})

    @extend_schema(request=inline_serializer("ReminderCreate", {
        "kind": serializers.ChoiceField(["medication", "insulin", "glucose_check", "meal_log", "sensor_change"]),
        "local_time": serializers.CharField(), "label": serializers.CharField(required=False),
        "weekdays": serializers.ListField(required=False), "every_n_days": serializers.IntegerField(required=False),
        "start_date": serializers.DateField(required=False),
    }), responses={201: ObjectResponse})
    def post(self, request: Request, patient_id: int) -> Response:
        patient = _reminder_writer(request, patient_id)
        try:
            reminder = reminders.reminder_create(patient=patient, created_by=_user(request), data=_body(request))
        except services.NotificationError as exc:
            raise _invalid(exc) from None
        return Response(reminder_json(reminder), status=status.HTTP_201_CREATED)


class PatientReminderApi(APIView):
    permission_classes: list[type[BasePermission]] = [IsPerson]

    def _reminder(self, request: Request, patient_id: int, reminder_id: int) -> Reminder:
        patient = _reminder_writer(request, patient_id)
        reminder = selectors.reminders_for(patient=patient, include_deleted=True).filter(pk=reminder_id).first()
        if reminder is None:
            raise NotFound(ERR_REMINDER_NOT_FOUND)
        return reminder

    @extend_schema(request=inline_serializer("ReminderPatch", {"local_time": serializers.CharField(required=False)}),
                   responses=ObjectResponse)
    def patch(self, request: Request, patient_id: int, reminder_id: int) -> Response:
        reminder = self._reminder(request, patient_id, reminder_id)
        if reminder.deleted_at is not None:
            raise NotFound(ERR_REMINDER_NOT_FOUND)
        try:
            reminder = reminders.reminder_update(reminder=reminder, data=_body(request))
        except services.NotificationError as exc:
            raise _invalid(exc) from None
        return Response(reminder_json(reminder))

    @extend_schema(request=None, responses={204: None})
    def delete(self, request: Request, patient_id: int, reminder_id: int) -> Response:
        reminders.reminder_delete(reminder=self._reminder(request, patient_id, reminder_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
