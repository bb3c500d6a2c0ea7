"""Forecast read endpoints: same permissions as readings (the patient, their caregivers, consenting care teams)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.query import StrictPageSizeMixin, glucose_unit, page_size_parameter, time_range
from api.views import START_END
from forecasting.models import Forecast
from forecasting.selectors import forecast_latest, forecasts_in_range
from glucoscope.patients.selectors import patient_get_for_user
from glucoscope.readings.selectors import glucose_in_unit

DISCLAIMER = (
    "Forecasts and risks are statistical estimates from CGM data for decision support; they are "
    "not a diagnosis. p10-p90 is the 80% prediction interval."
)
UNIT_PARAMETER = OpenApiParameter("unit", str, enum=["mg/dL", "mmol/L"])


def forecast_json(forecast: Forecast | None, unit: str) -> dict[str, Any]:
    if forecast is None:
        return {"origin": None, "model_version": None, "personalised": False, "status": "no_forecast", "unit": unit,
                "points": [], "risk": None, "disclaimer": DISCLAIMER}
    risk = getattr(forecast, "risk", None)
    return {
        "origin": forecast.origin.isoformat(),
        "model_version": forecast.model_version.version,
        # True: the model's output layer was tuned on this patient's own readings (docs/forecasting.md).
        "personalised": forecast.personalisation_id is not None,
        "status": forecast.status,
        "reason": forecast.reason or None,
        "unit": unit,
        "points": [
            {"minutes_ahead": p["minutes_ahead"], "value": glucose_in_unit(p["p50"], unit),
             "p10": glucose_in_unit(p["p10"], unit), "p90": glucose_in_unit(p["p90"], unit)}
            for p in forecast.points
        ],
        "risk": {
            "below_70_30min": risk.below_70_30min, "below_70_60min": risk.below_70_60min,
            "below_54_30min": risk.below_54_30min, "below_54_60min": risk.below_54_60min,
            "above_250_60min": risk.above_250_60min,
        } if risk else None,
        "disclaimer": DISCLAIMER,
    }


class PatientForecastApi(APIView):
    """The latest forecast, every 5 min to 120 min ahead with its 80% band, and near-term risk."""

    @extend_schema(parameters=[UNIT_PARAMETER], responses=inline_serializer("Forecast", {"status": serializers.CharField()}))
    def get(self, request: Request, patient_id: int) -> Response:
        patient = patient_get_for_user(user=request.user, patient_id=patient_id)  # type: ignore[arg-type]
        unit = glucose_unit(request, default=patient.preferred_unit)
        return Response(forecast_json(forecast_latest(patient=patient), unit))


class PatientForecastHistoryApi(APIView):
    class Pagination(StrictPageSizeMixin, CursorPagination):
        ordering = "-origin"
        page_size = 50
        page_size_query_param = "page_size"
        max_page_size = 500

    @extend_schema(parameters=[*START_END, UNIT_PARAMETER, page_size_parameter(500, 50)],
                   responses=inline_serializer("ForecastPage", {"results": serializers.ListField()}))
    def get(self, request: Request, patient_id: int) -> Response:
        patient = patient_get_for_user(user=request.user, patient_id=patient_id)  # type: ignore[arg-type]
        start, end = time_range(request)
        unit = glucose_unit(request, default=patient.preferred_unit)
        paginator = self.Pagination()
        page = paginator.paginate_queryset(forecasts_in_range(patient=patient, start=start, end=end), request, view=self)
        return paginator.get_paginated_response([forecast_json(f, unit) for f in page or []])
