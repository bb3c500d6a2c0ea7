"""The second sign-in step on the care-team pages: a TOTP code, or enrolling an authenticator the first time.

After the password (ClinicianLoginView) the session is signed in but not verified; every care-team
page sends it here until django-otp marks it verified. Wrong codes count towards the same
django-axes lockout as wrong passwords.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from axes.handlers.proxy import AxesProxyHandler
from django import forms
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.contrib.auth.signals import user_login_failed
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods
from django_otp import login as otp_login
from django_otp import match_token, user_has_device

from api.auth import lockout_response
from glucoscope.patients import services
from glucoscope.patients.models import User

ERR_BAD_CODE = "That code is not valid. Enter the current 6-digit code from your authenticator app."


class CodeForm(forms.Form):
    code = forms.CharField(max_length=10, min_length=6, strip=True,
                           widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric",
                                                         "autofocus": True}))


def next_url(request: HttpRequest) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return reverse("web:dashboard")


def with_next(name: str, target: str) -> str:
    return f"{reverse(name)}?{urlencode({'next': target})}"


def _failed(request: HttpRequest, user: User) -> HttpResponse | None:
    """Records the failure; once the lockout is reached the session is ended and the lockout page shown."""
    credentials = {"username": user.username}
    user_login_failed.send(sender=__name__, credentials=credentials, request=request)
    if not AxesProxyHandler.is_allowed(request, credentials):
        logout(request)
        return lockout_response(request, credentials=credentials)
    return None


def _locked(request: HttpRequest, user: User) -> HttpResponse | None:
    credentials = {"username": user.username}
    if AxesProxyHandler.is_allowed(request, credentials):
        return None
    logout(request)
    return lockout_response(request, credentials=credentials)


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def otp_verify(request: HttpRequest) -> HttpResponse:
    user: User = request.user  # type: ignore[assignment]
    target = next_url(request)
    if request.user.is_verified():  # type: ignore[union-attr]
        return redirect(target)
    if not user_has_device(user, confirmed=True):
        return redirect(with_next("web:otp-enrol", target))
    form = CodeForm(request.POST or None)
    if request.method == "POST":
        if (locked := _locked(request, user)) is not None:
            return locked
        if form.is_valid():
            device = match_token(user, form.cleaned_data["code"])
            if device is not None:
                otp_login(request, device)
                return redirect(target)
        form.add_error(None, ERR_BAD_CODE)
        if (locked := _failed(request, user)) is not None:
            return locked
    return render(request, "web/otp_verify.html", {"form": form, "next": target})


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def otp_enrol(request: HttpRequest) -> HttpResponse:
    """First sign-in: show the new authenticator's secret and confirm it with a code from the app."""
    user: User = request.user  # type: ignore[assignment]
    target = next_url(request)
    if user_has_device(user, confirmed=True):
        return redirect(with_next("web:otp-verify", target))
    enrolment = services.totp_enrolment_start(user=user)
    form = CodeForm(request.POST or None)
    if request.method == "POST":
        if (locked := _locked(request, user)) is not None:
            return locked
        if form.is_valid() and services.totp_enrolment_confirm(device=enrolment.device, code=form.cleaned_data["code"]):
            otp_login(request, enrolment.device)
            return redirect(target)
        form.add_error(None, ERR_BAD_CODE)
        if (locked := _failed(request, user)) is not None:
            return locked
    context: dict[str, Any] = {"form": form, "next": target, "secret": enrolment.secret_base32,
                               "otpauth_uri": enrolment.otpauth_uri}
    return render(request, "web/otp_enrol.html", context)
