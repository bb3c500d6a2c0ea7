"""Notification reads. Scope is decided by the caller: the recipient for their own inbox, or a
patient already resolved through `patient_get_for_user` for the care team's view."""

from __future__ import annotations

from django.db.models import QuerySet

from glucoscope.patients.models import Patient, User
from notifications.models import Notification, Reminder


def notifications_received(*, user: User) -> QuerySet[Notification]:
    return Notification.objects.filter(recipient=user).order_by("-created_at", "-pk")


def notifications_about(*, patient: Patient) -> QuerySet[Notification]:
    return Notification.objects.filter(patient=patient).order_by("-created_at", "-pk")


def reminders_for(*, patient: Patient, include_deleted: bool = False) -> QuerySet[Reminder]:
    query = Reminder.objects.filter(patient=patient).order_by("local_time", "pk")
    return query if include_deleted else query.filter(deleted_at__isnull=True)
