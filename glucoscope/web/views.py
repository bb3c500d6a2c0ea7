"""Care-team pages: session login, triage dashboard, patient page, charts and the AGP PDF.

Thin views: every figure comes from glucoscope/web/selectors.py, glucoscope/web/analytics.py and
forecasting/glucotypes.py. Anonymous users are redirected to the login page; signed-in users who
are not clinicians get 403; a patient outside the clinician's consenting teams is a 404.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import Any
from zoneinfo import ZoneInfo

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from forecasting.glucotypes import glucotype_history, glucotype_latest
from forecasting.selectors import forecast_latest
from glucoscope.audit.context import audit_note
from glucoscope.metrics import agp_profile, daily_profiles
from glucoscope.patients.models import MGDL_PER_MMOLL, Patient, Role
from glucoscope.web import analytics, charts, otp_views, selectors
from notifications.services import MAX_MESSAGE_LENGTH, NotificationError, care_message_send

MESSAGE_SENT = "Message queued for the patient's app (sent outside their quiet hours)."

ERR_NOT_CLINICIAN_LOGIN = "This sign-in is for care-team clinicians. Staff use /admin/; patients use the app."
# Repeated failed sign-ins (password or second-factor code) lock the username at that address out
# through django-axes (settings AXES_*; docs/security.md), shared with the API and the admin.
UNITS = ("mg/dL", "mmol/L")
RECENT_HOURS = 6


class ClinicianAuthenticationForm(AuthenticationForm):
    """Only clinicians sign in here, so a patient's password never opens another patient's data."""

    def confirm_login_allowed(self, user: Any) -> None:
        super().confirm_login_allowed(user)
        if user.role != Role.CLINICIAN:
            raise forms.ValidationError(ERR_NOT_CLINICIAN_LOGIN, code="not_clinician")


class ClinicianLoginView(LoginView):
    """The password step; the second factor (glucoscope/web/otp_views.py) follows before any page opens."""

    template_name = "web/login.html"
    authentication_form = ClinicianAuthenticationForm
    redirect_authenticated_user = True

    def get_success_url(self) -> str:
        return otp_views.with_next("web:otp-verify", super().get_success_url())


View = Callable[..., HttpResponse]


def clinician_page(view: View) -> View:
    """Login redirect for anonymous users, 403 for other roles, no caching of health data."""

    @wraps(view)
    @login_required
    @never_cache
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            selectors.clinician_or_denied(request.user)
        except PermissionError as exc:
            raise PermissionDenied(str(exc)) from None
        if not request.user.is_verified():  # type: ignore[union-attr]  # set by django_otp's middleware
            # Password alone is not enough for health data: the TOTP step (or enrolment) comes first.
            return redirect(otp_views.with_next("web:otp-verify", request.get_full_path()))
        return view(request, *args, **kwargs)

    return wrapper


def _unit(request: HttpRequest, patient: Patient) -> str:
    unit = request.GET.get("unit", patient.preferred_unit)
    return unit if unit in UNITS else patient.preferred_unit


def _glucose(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    return f"{value / MGDL_PER_MMOLL:.1f}" if unit == "mmol/L" else f"{value:.0f}"


@require_GET
@clinician_page
def dashboard(request: HttpRequest) -> HttpResponse:
    sort = request.GET.get("sort", "need")
    glucotype = request.GET.get("glucotype") or None
    risk = request.GET.get("risk") or None
    rows = selectors.triage_rows(user=request.user, sort=sort, glucotype=glucotype, risk=risk)  # type: ignore[arg-type]
    audit_note(patient_ids=[row.patient_id for row in rows])  # the triage table shows every listed patient's data
    return render(request, "web/dashboard.html", {
        "rows": rows, "sort": sort if sort in selectors.SORTS else "need", "glucotype": glucotype, "risk": risk,
        "sorts": selectors.SORTS, "glucotypes": selectors.GLUCOTYPE_FILTERS, "risks": selectors.RISK_FILTERS,
        "now": timezone.now(), "stale_after_minutes": int(selectors.STALE_AFTER.total_seconds() // 60),
        "worsening_points": selectors.WORSENING_GRI_POINTS,
    })


def _period(request: HttpRequest, patient: Patient) -> tuple[datetime, datetime]:
    # The page always shows the consensus period (last 14 local days); the API takes custom ranges.
    return analytics.default_period(patient=patient)


@require_GET
@clinician_page
def patient_page(request: HttpRequest, patient_id: int) -> HttpResponse:
    patient = selectors.patient_for_clinician(user=request.user, patient_id=patient_id)  # type: ignore[arg-type]
    unit = _unit(request, patient)
    start, end = _period(request, patient)
    series = analytics.glucose_series(patient=patient, start=start, end=end)
    summary = analytics.summarize(series)
    metrics = analytics.metrics_json(summary=summary, start=start, end=end, unit=unit)
    recent = selectors.recent_readings(patient=patient, hours=RECENT_HOURS)
    latest = recent[-1] if recent else None
    forecast = forecast_latest(patient=patient)
    risk = getattr(forecast, "risk", None) if forecast else None
    indicators = analytics.patient_risk_indicators(patient=patient)
    glucotype = glucotype_latest(patient=patient)
    return render(request, "web/patient.html", {
        "patient": patient, "unit": unit, "units": UNITS, "metrics": metrics, "summary": summary,
        "start": start, "end": end, "zone": patient.time_zone,
        "latest": latest and {"at": latest[0], "value": _glucose(latest[1], unit), "flag": latest[2]},
        "latest_direction": selectors.latest_direction(patient=patient),
        "forecast": forecast, "risk": risk,
        "indicators": indicators, "glucotype": glucotype, "glucotype_history": glucotype_history(patient=patient),
        "notifications": selectors.notifications_sent(patient=patient),
        "sd_display": _glucose(summary.sd, unit), "mean_display": _glucose(summary.mean_glucose, unit),
        "max_message_length": MAX_MESSAGE_LENGTH,
    })


@require_POST
@clinician_page
def send_message(request: HttpRequest, patient_id: int) -> HttpResponse:
    """A care-team message to the patient's app, through the notifications service (CSRF-protected form)."""
    patient = selectors.patient_for_clinician(user=request.user, patient_id=patient_id)  # type: ignore[arg-type]
    try:
        care_message_send(patient=patient, author=request.user, text=request.POST.get("text", ""))  # type: ignore[arg-type]
    except NotificationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, MESSAGE_SENT)
    return redirect("web:patient", patient_id=patient.pk)


def _svg(content: bytes) -> HttpResponse:
    response = HttpResponse(content, content_type="image/svg+xml")
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
@clinician_page
def recent_chart(request: HttpRequest, patient_id: int) -> HttpResponse:
    patient = selectors.patient_for_clinician(user=request.user, patient_id=patient_id)  # type: ignore[arg-type]
    forecast = forecast_latest(patient=patient)
    fig = charts.recent_figure(
        readings=selectors.recent_readings(patient=patient, hours=RECENT_HOURS),
        forecast_points=forecast.points if forecast and forecast.status == "ok" else [],
        origin=forecast.origin if forecast else None,
        unit=_unit(request, patient), zone=ZoneInfo(patient.time_zone), hours=RECENT_HOURS,
    )
    return _svg(charts.to_svg(fig))


def _agp(request: HttpRequest, patient: Patient) -> Any:
    start, end = _period(request, patient)
    series = analytics.glucose_series(patient=patient, start=start, end=end)
    return charts.agp_figure(
        title=patient.user.get_full_name() or patient.user.username,
        summary=analytics.summarize(series),
        profile=agp_profile(series.values_mg_dl, series.epoch_seconds, utc_offset_seconds=series.utc_offset_seconds),
        daily=daily_profiles(series.values_mg_dl, series.epoch_seconds, utc_offset_seconds=series.utc_offset_seconds),
        unit=_unit(request, patient), start=start, end=end, zone=ZoneInfo(patient.time_zone),
    )


@require_GET
@clinician_page
def agp_svg(request: HttpRequest, patient_id: int) -> HttpResponse:
    patient = selectors.patient_for_clinician(user=request.user, patient_id=patient_id)  # type: ignore[arg-type]
    return _svg(charts.to_svg(_agp(request, patient)))


@require_GET
@clinician_page
def agp_pdf(request: HttpRequest, patient_id: int) -> HttpResponse:
    patient = selectors.patient_for_clinician(user=request.user, patient_id=patient_id)  # type: ignore[arg-type]
    response = HttpResponse(charts.to_pdf(_agp(request, patient)), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="agp-patient-{patient.pk}-{timezone.now():%Y%m%d}.pdf"'
    response["Cache-Control"] = "private, no-store"
    return response
