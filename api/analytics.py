"""Clinical analytics endpoints: consensus metrics, AGP, long-term risk indicators and the CSV export.

Same access as readings: the patient, their caregivers and consenting care teams; 404 otherwise.
Views are thin: parse, call a selector in glucoscope/web/analytics.py, shape the response.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.forecasts import UNIT_PARAMETER
from api.query import glucose_unit, time_range
from api.renderers import OrjsonRenderer
from glucoscope.patients.models import Patient
from glucoscope.patients.selectors import patient_get_for_user
from glucoscope.web import analytics

ERR_BIN_MINUTES = "bin_minutes must be one of {choices}."
AGP_BIN_CHOICES = (5, 10, 15, 20, 30, 60)  # divisors of 1440, so every bin is the same length
PERIOD = [
    OpenApiParameter("start", str, description="ISO 8601 with offset, or epoch ms. Default: local midnight 13 days before today."),
    OpenApiParameter("end", str, description="ISO 8601 with offset, or epoch ms. Default: now."),
]


def analytics_period(request: Request, *, patient: Patient) -> tuple[datetime, datetime]:
    """Default: the last 14 local days (consensus period); otherwise start/end as for readings (≤ 90 days)."""
    if "start" not in request.query_params and "end" not in request.query_params:
        return analytics.default_period(patient=patient)
    return time_range(request, default=timedelta(days=analytics.DEFAULT_PERIOD_DAYS))


def _patient(request: Request, patient_id: int) -> Patient:
    return patient_get_for_user(user=request.user, patient_id=patient_id)  # type: ignore[arg-type]


class PatientMetricsApi(APIView):
    """Consensus CGM metrics (Battelino 2019) plus GRI, LBGI/HBGI and MAGE over a period.

    Glucose fields (mean_glucose, sd, mage) are in `unit` (also in the `Glucose-Unit` header);
    percentages are 0–100, GMI is %, LBGI/HBGI/GRI are unitless. `sufficient_data` (≥14 days and
    ≥70% active) is shown beside the numbers, never instead of them.
    """

    @extend_schema(parameters=[*PERIOD, UNIT_PARAMETER],
                   responses=inline_serializer("Metrics", {k: serializers.JSONField() for k in analytics.METRIC_KEYS}))
    def get(self, request: Request, patient_id: int) -> Response:
        patient = _patient(request, patient_id)
        start, end = analytics_period(request, patient=patient)
        unit = glucose_unit(request, default=patient.preferred_unit)
        body = analytics.patient_metrics(patient=patient, start=start, end=end, unit=unit)
        return Response(body, headers={"Glucose-Unit": unit})


class PatientAgpApi(APIView):
    """Ambulatory Glucose Profile: modal-day 5/25/50/75/95 percentiles per time-of-day bin, and daily profiles."""

    @extend_schema(parameters=[*PERIOD, UNIT_PARAMETER, OpenApiParameter("bin_minutes", int, enum=list(AGP_BIN_CHOICES))],
                   responses=inline_serializer("AGP", {"percentiles": serializers.ListField()}))
    def get(self, request: Request, patient_id: int) -> Response:
        patient = _patient(request, patient_id)
        start, end = analytics_period(request, patient=patient)
        unit = glucose_unit(request, default=patient.preferred_unit)
        raw = request.query_params.get("bin_minutes", "15")
        if not raw.isdigit() or int(raw) not in AGP_BIN_CHOICES:
            raise ValidationError({"bin_minutes": [ERR_BIN_MINUTES.format(choices=", ".join(map(str, AGP_BIN_CHOICES)))]})
        return Response(analytics.patient_agp(patient=patient, start=start, end=end, unit=unit, bin_minutes=int(raw)))


class PatientRiskIndicatorsApi(APIView):
    """Long-term risk indicators (estimates, never a diagnosis) for the last 14 days and their 3-month trend.

    Beck 2019 hazard ratios with 95% CIs, the HbA1c-adjusted Lachin 2022 HR beside them, GMI as an
    HbA1c estimate and the GRI zone; each block carries its citation.
    """

    @extend_schema(parameters=[PERIOD[1]], responses=inline_serializer("RiskIndicators", {"current": serializers.DictField()}))
    def get(self, request: Request, patient_id: int) -> Response:
        patient = _patient(request, patient_id)
        end = timezone.now()
        if "end" in request.query_params:
            # Reuse the shared parser for the error messages; the start it returns is not used.
            end = time_range(request, default=timedelta(days=1))[1]
        return Response(analytics.patient_risk_indicators(patient=patient, end=end))


class CsvRenderer(BaseRenderer):
    """Lets `Accept: text/csv` negotiate; errors on this route are still JSON text."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data: object, accepted_media_type: str | None = None, renderer_context: Mapping[str, Any] | None = None) -> bytes:
        return OrjsonRenderer().render(data)


class PatientExportApi(APIView):
    """All of the patient's readings and treatments as one CSV (mg/dL, UTC), streamed."""

    renderer_classes = [OrjsonRenderer, CsvRenderer]
    audit_action = "export"  # recorded as an export, not a plain read (glucoscope/audit/middleware.py)

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        # Errors are JSON and say so, whatever was negotiated: `?format=csv` used to label a 404's JSON body
        # text/csv (found by the schemathesis run, tests/fuzz).
        if isinstance(response, Response):
            request.accepted_renderer = OrjsonRenderer()
            request.accepted_media_type = OrjsonRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)

    # The export is CSV whatever DRF's `?format=` override says; it is not part of this endpoint's contract.
    @extend_schema(parameters=[OpenApiParameter("format", exclude=True)], responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request, patient_id: int) -> StreamingHttpResponse:
        patient = _patient(request, patient_id)
        response = StreamingHttpResponse(analytics.export_rows(patient=patient), content_type="text/csv; charset=utf-8")
        stamp = timezone.now().strftime("%Y%m%d")
        response["Content-Disposition"] = f'attachment; filename="glucoscope-patient-{patient.pk}-{stamp}.csv"'
        response["Cache-Control"] = "no-store"  # health data must not linger in shared caches
        return response
