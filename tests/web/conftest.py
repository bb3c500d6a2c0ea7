from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from api.auth import mfa_required
from forecasting import services as forecasting_services
from forecasting.models import Forecast, ForecastStatus, GlucotypeAssignment, GlucotypeModel, RiskAssessment
from glucoscope.patients.models import Patient, User
from glucoscope.web.services import TRIAGE_DAYS, day_counts_refresh
from tests.conftest import otp_verified_login


def session_client(user: User | None) -> Client:
    """A signed-in session; clinicians and staff also pass the TOTP step (MFA is never switched off in tests)."""
    client = Client()
    if user is not None and mfa_required(user):
        otp_verified_login(client, user)
    elif user is not None:
        client.force_login(user)
    return client


def add_forecast(patient: Patient, *, below_70_30min: float, minutes_ago: float = 3, start: float = 100.0,
                 slope_per_min: float = -0.2) -> Forecast:
    """A stored forecast whose median moves linearly from ``start`` mg/dL, with a band widening with horizon."""
    origin = timezone.now() - timedelta(minutes=minutes_ago)
    points = [{"minutes_ahead": m, "p10": start + slope_per_min * m - 8 - m / 4, "p50": start + slope_per_min * m,
               "p90": start + slope_per_min * m + 8 + m / 3} for m in range(5, 125, 5)]
    forecast = Forecast.objects.create(patient=patient, origin=origin, model_version=forecasting_services.model_version_active(),
                                       status=ForecastStatus.OK, points=points)
    RiskAssessment.objects.create(forecast=forecast, below_70_30min=below_70_30min, below_70_60min=below_70_30min,
                                  below_54_30min=below_70_30min / 2, below_54_60min=below_70_30min / 2, above_250_60min=0.01)
    return forecast


def add_glucotype(patients: list[Patient], names: list[str]) -> GlucotypeModel:
    now = timezone.now()
    model = GlucotypeModel.objects.create(metric="euclidean", representation="sorted", class_names=["low", "moderate", "severe"],
                                          class_mean_sd_mgdl=[6.9, 9.7, 17.3], period_start=now - timedelta(days=14),
                                          period_end=now, n_patients=len(patients), n_windows=100, fit_seconds=0.1,
                                          model_json={})
    for p, name in zip(patients, names, strict=True):
        GlucotypeAssignment.objects.create(patient=p, model=model, glucotype=name, n_windows=20, assigned_at=now,
                                           shares={"low": 0.2, "moderate": 0.3, "severe": 0.5})
    return model


@pytest.fixture(autouse=True)
def _plain_http_sessions(settings) -> None:  # type: ignore[no-untyped-def]
    # Tests run in production mode over plain HTTP; secure-only cookies would never come back.
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False


def refresh_counts() -> None:
    """What the nightly task does: recount the triage day table for everyone."""
    day_counts_refresh(patient_ids=None, days=TRIAGE_DAYS)
