from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from forecasting.models import Forecast
from glucoscope.patients.models import Patient


def forecast_latest(*, patient: Patient) -> Forecast | None:
    return (
        Forecast.objects.filter(patient=patient).select_related("model_version", "risk")
        .order_by("-origin", "-created_at").first()
    )


def forecasts_in_range(*, patient: Patient, start: datetime, end: datetime) -> QuerySet[Forecast]:
    return Forecast.objects.filter(patient=patient, origin__gte=start, origin__lt=end).select_related("model_version", "risk")
