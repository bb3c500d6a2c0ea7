"""A patient's own sharing controls: consent to care teams and caregiver invitations.

Only the patient themselves may change who sees their data (property-level rule: nobody can
grant access to someone else's record).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.permissions import IsPerson
from glucoscope.patients import services
from glucoscope.patients.models import CaregiverLink, CareTeamConsent, Patient, Role

ERR_NOT_FOUND = "Not found."


class IsPatient(IsPerson):
    message = "Only the patient can change who their data is shared with."

    def has_permission(self, request: Request, view: Any) -> bool:
        return super().has_permission(request, view) and request.user.role == Role.PATIENT and hasattr(request.user, "patient")  # type: ignore[union-attr]


def _patient(request: Request) -> Patient:
    return request.user.patient  # type: ignore[union-attr]


def consent_json(consent: CareTeamConsent) -> dict[str, Any]:
    return {
        "care_team": consent.care_team_id,
        "care_team_name": consent.care_team.name,
        "granted_at": consent.granted_at.isoformat(),
        "revoked_at": consent.revoked_at.isoformat() if consent.revoked_at else None,
    }


def caregiver_json(link: CaregiverLink) -> dict[str, Any]:
    return {
        "caregiver": link.caregiver_id,
        "username": link.caregiver.username,
        "invited_at": link.created_at.isoformat(),
        "revoked_at": link.revoked_at.isoformat() if link.revoked_at else None,
    }


def _int_field(data: Any, field: str) -> int:
    value = data.get(field) if isinstance(data, dict) else None
    if type(value) is not int:
        raise ValidationError({field: ["A whole-number id is required."]})
    return value


class ConsentListApi(APIView):
    audit_self = True  # the caller's own record (audit log: glucoscope/audit/middleware.py)
    permission_classes: list[type[BasePermission]] = [IsPatient]

    @extend_schema(responses=inline_serializer("Consents", {"results": serializers.ListField()}))
    def get(self, request: Request) -> Response:
        consents = CareTeamConsent.objects.filter(patient=_patient(request)).select_related("care_team").order_by("-granted_at")
        return Response({"results": [consent_json(c) for c in consents]})

    @extend_schema(request=inline_serializer("ConsentGrant", {"care_team": serializers.IntegerField()}),
                   responses={201: inline_serializer("Consent", {"care_team": serializers.IntegerField()})})
    def post(self, request: Request) -> Response:
        try:
            consent = services.consent_grant_by_id(patient=_patient(request), care_team_id=_int_field(request.data, "care_team"))
        except services.SharingError as exc:
            raise ValidationError({exc.field: [exc.message]}) from None
        return Response(consent_json(consent), status=status.HTTP_201_CREATED)


class ConsentDetailApi(APIView):
    audit_self = True
    permission_classes: list[type[BasePermission]] = [IsPatient]

    @extend_schema(responses={204: None})
    def delete(self, request: Request, care_team_id: int) -> Response:
        from glucoscope.patients.models import CareTeam

        team = CareTeam.objects.filter(pk=care_team_id).first()
        if team is None or not services.consent_revoke(patient=_patient(request), care_team=team):
            return Response({"detail": ERR_NOT_FOUND}, status=status.HTTP_404_NOT_FOUND)
        return Response(status=status.HTTP_204_NO_CONTENT)


class CaregiverListApi(APIView):
    audit_self = True
    permission_classes: list[type[BasePermission]] = [IsPatient]

    @extend_schema(responses=inline_serializer("Caregivers", {"results": serializers.ListField()}))
    def get(self, request: Request) -> Response:
        links = CaregiverLink.objects.filter(patient=_patient(request)).select_related("caregiver").order_by("-created_at")
        return Response({"results": [caregiver_json(link) for link in links]})

    @extend_schema(request=inline_serializer("CaregiverInvite", {"username": serializers.CharField()}),
                   responses={201: inline_serializer("Caregiver", {"caregiver": serializers.IntegerField()})})
    def post(self, request: Request) -> Response:
        username = request.data.get("username") if isinstance(request.data, dict) else None
        if not isinstance(username, str) or not username.strip():
            raise ValidationError({"username": ["The caregiver's username is required."]})
        try:
            link = services.caregiver_invite(patient=_patient(request), username=username.strip())
        except services.SharingError as exc:
            raise ValidationError({exc.field: [exc.message]}) from None
        return Response(caregiver_json(link), status=status.HTTP_201_CREATED)


class CaregiverDetailApi(APIView):
    audit_self = True
    permission_classes: list[type[BasePermission]] = [IsPatient]

    @extend_schema(responses={204: None})
    def delete(self, request: Request, caregiver_id: int) -> Response:
        if not services.caregiver_revoke(patient=_patient(request), caregiver_id=caregiver_id):
            return Response({"detail": ERR_NOT_FOUND}, status=status.HTTP_404_NOT_FOUND)
        return Response(status=status.HTTP_204_NO_CONTENT)
