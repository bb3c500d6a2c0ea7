"""Deny by default: the default permission admits only people; other principals are opted in per view."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from api.authentication import NightscoutPrincipal, VendorPrincipal
from glucoscope.patients.models import Role, User


class IsPerson(BasePermission):
    """A logged-in person (patient, caregiver, clinician, staff), never a vendor key or uploader secret."""

    message = "This endpoint is for people signed in with a Bearer token."

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, User) and request.user.is_active


class CanUploadReadings(BasePermission):
    message = "Readings are posted by the patient's own app (Bearer token) or a vendor key."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if isinstance(user, VendorPrincipal):
            return True
        return isinstance(user, User) and user.role == Role.PATIENT and hasattr(user, "patient")


class IsNightscoutUploader(BasePermission):
    message = "Send the patient's api-secret (SHA-1 of the Nightscout secret) or token."

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, NightscoutPrincipal)
