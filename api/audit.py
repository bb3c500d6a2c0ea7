"""`GET me/access-log`: a patient sees who read or changed their data, newest first.

Shown: when, who (display name and role, or the uploader or vendor), what (action, endpoint,
outcome). The IP address is shown only for the patient's own requests, so they can spot a
session that is not theirs; clinicians' and caregivers' addresses are those people's personal
data and stay with staff, who see every field in the Django admin.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.pagination import CursorPagination
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.query import StrictPageSizeMixin, time_range
from api.sharing import IsPatient
from glucoscope.audit.models import ActorKind, AuditEntry
from glucoscope.audit.selectors import access_log_for_patient
from glucoscope.patients.models import User

DEFAULT_RANGE = timedelta(days=30)
ACTOR_DISPLAY = {ActorKind.NIGHTSCOUT: "Nightscout uploader", ActorKind.SYSTEM: "GlucoScope"}


class IsPatientAccount(IsPatient):
    message = "The access log belongs to the patient's own account."


def access_entry_json(entry: AuditEntry, *, own_user_id: int) -> dict[str, Any]:
    is_self = entry.actor_user_id == own_user_id
    if entry.actor_kind == ActorKind.VENDOR:
        actor = entry.actor_label.removeprefix("vendor:")
    else:
        actor = ACTOR_DISPLAY.get(entry.actor_kind) or entry.actor_name or entry.actor_label  # type: ignore[call-overload]
    return {
        "at": entry.at.isoformat(),
        "actor": actor,
        "actor_role": entry.actor_role,
        "is_you": is_self,
        "action": entry.action,
        "endpoint": entry.route,
        "method": entry.method,
        "status_code": entry.status_code,
        "ip": entry.ip if is_self else None,
    }


AccessEntry = inline_serializer("AccessLogEntry", {
    "at": serializers.DateTimeField(), "actor": serializers.CharField(), "actor_role": serializers.CharField(),
    "is_you": serializers.BooleanField(), "action": serializers.CharField(), "endpoint": serializers.CharField(),
    "method": serializers.CharField(), "status_code": serializers.IntegerField(allow_null=True),
    "ip": serializers.CharField(allow_null=True),
})


class AccessLogPagination(StrictPageSizeMixin, CursorPagination):  # page_size=0/abc/9999: 400 (tests/fuzz)
    ordering = ("-at", "-id")
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 500


class MyAccessLogApi(APIView):
    """Who read or changed the caller's data (cursor pages, newest first; default the last 30 days, ≤ 90)."""

    audit_self = True  # reading one's own access log is itself recorded (glucoscope/audit/middleware.py)
    permission_classes: list[type[BasePermission]] = [IsPatientAccount]

    @extend_schema(
        parameters=[
            OpenApiParameter("start", str, description="ISO 8601 with offset, or epoch ms. Default: end − 30 days."),
            OpenApiParameter("end", str, description="ISO 8601 with offset, or epoch ms. Default: now."),
            OpenApiParameter("page_size", int, description="1–500, default 100."),
        ],
        responses=inline_serializer("AccessLogPage", {
            "next": serializers.URLField(allow_null=True), "previous": serializers.URLField(allow_null=True),
            "results": serializers.ListField(child=AccessEntry),
            "start": serializers.DateTimeField(), "end": serializers.DateTimeField(),
        }),
    )
    def get(self, request: Request) -> Response:
        user: User = request.user  # type: ignore[assignment]
        start, end = time_range(request, default=DEFAULT_RANGE)
        paginator = AccessLogPagination()
        entries = access_log_for_patient(patient_id=user.patient.pk, start=start, end=end)
        page = paginator.paginate_queryset(entries, request, view=self)
        response = paginator.get_paginated_response([access_entry_json(e, own_user_id=user.pk) for e in page or []])
        response.data.update({"start": start.isoformat(), "end": end.isoformat()})
        return response
