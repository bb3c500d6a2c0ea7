"""A patient's rights over their data: `GET me/export` (JSON or a zip of CSVs) and `DELETE me`.

Thin views over glucoscope/patients/account.py. Both are for the patient's own account only.
The export is recorded in the audit log as `export`; the deletion writes its `account_deleted`
entry inside the deleting transaction, and that entry outlives the account.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.permissions import BasePermission
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle
from rest_framework.views import APIView

from api.renderers import OrjsonRenderer
from api.sharing import IsPatient
from api.views import MeApi
from glucoscope.audit.context import audit_note
from glucoscope.audit.models import AuditAction
from glucoscope.patients import account

EXPORT_FORMATS = ("json", "csv")
ERR_EXPORT_FORMAT = "format must be json or csv."


class IsPatientAccount(IsPatient):
    message = "Only a patient can export or delete their own account."


class FirstRendererNegotiation(BaseContentNegotiation):
    """`?format=` here chooses the export's file type, not DRF's renderer, so errors stay JSON."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        return next(iter(parsers), None)

    def select_renderer(self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


class MyExportApi(APIView):
    """Everything GlucoScope holds about the caller: profile, readings, treatments, forecasts, risk
    assessments, notifications, reminders, devices, consents, caregivers and the access log.

    `format=json` (default): one JSON document. `format=csv`: a zip with one CSV per table. Glucose is
    in mg/dL and times in UTC; column names carry their units. Streamed, so any size works.
    """

    permission_classes: list[type[BasePermission]] = [IsPatientAccount]
    content_negotiation_class = FirstRendererNegotiation
    renderer_classes = [OrjsonRenderer]
    audit_action = AuditAction.EXPORT

    @extend_schema(
        parameters=[OpenApiParameter("format", str, enum=list(EXPORT_FORMATS), description="json (default) or csv (zip).")],
        responses={
            (200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT, description="One JSON document."),
            (200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY, description="One CSV per table."),
        },
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        export_format = request.query_params.get("format", "json")
        if export_format not in EXPORT_FORMATS:
            raise ValidationError({"format": [ERR_EXPORT_FORMAT]})
        patient = request.user.patient  # type: ignore[union-attr]
        audit_note(patient_ids=[patient.pk], action=AuditAction.EXPORT)
        stamp = timezone.now().strftime("%Y%m%d")
        if export_format == "csv":
            response = StreamingHttpResponse(account.export_csv_zip_chunks(patient=patient), content_type="application/zip")
            filename = f"glucoscope-export-{stamp}.zip"
        else:
            response = StreamingHttpResponse(account.export_json_chunks(patient=patient), content_type="application/json")
            filename = f"glucoscope-export-{stamp}.json"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        response["Cache-Control"] = "no-store"  # health data must not linger in shared caches
        return response


class AccountDeletionThrottle(SimpleRateThrottle):
    """The password check is a guessing oracle, so it shares the sign-in budget (THROTTLE_LOGIN_RATE)."""

    scope = "login"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": f"delete-account:{request.user.pk}"}  # type: ignore[union-attr]


class MeAccountApi(MeApi):
    """`GET me`: the caller's profile. `DELETE me`: a patient deletes their account (password required)."""

    openapi_body_methods = ("DELETE",)  # DELETE me carries the password in its body (api/schema.py)

    def get_permissions(self) -> Sequence[Any]:
        if self.request.method == "DELETE":
            return [IsPatientAccount()]
        return super().get_permissions()

    def get_throttles(self) -> list[BaseThrottle]:
        throttles = list(super().get_throttles())
        if self.request.method == "DELETE":
            throttles.append(AccountDeletionThrottle())
        return throttles

    @extend_schema(
        description="Delete the caller's patient account and all its data; their tokens stop working. The audit "
                    "log keeps an `account_deleted` entry. Send the current password.",
        request=inline_serializer("AccountDelete", {"password": serializers.CharField(help_text="The current password.")}),
        responses={204: None,
                   400: OpenApiResponse(description="password missing."),
                   403: OpenApiResponse(description="password wrong, or not a patient account.")},
    )
    def delete(self, request: Request) -> Response:
        password = request.data.get("password") if isinstance(request.data, Mapping) else None
        try:
            account.account_delete(user=request.user, password=password, request=request._request)  # type: ignore[arg-type]
        except account.AccountDeletionError as exc:
            if exc.wrong_password:
                raise PermissionDenied(exc.message) from None
            raise ValidationError({exc.field: [exc.message]}) from None
        return Response(status=status.HTTP_204_NO_CONTENT)
