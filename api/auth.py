"""People's sign-in to the API: tokens, refresh, logout, revoke-all, MFA and lockout (OWASP API2:2023).

- Access tokens live ACCESS_TOKEN_MINUTES, refresh tokens REFRESH_TOKEN_DAYS and rotate on use.
- Every token carries the user's token generation (claim `gen`); revoke-all, a password change and
  deactivation bump it, and `RevocableJWTAuthentication` refuses other generations at once. The user
  row is loaded on every request anyway, so the check costs nothing.
- Repeated failures (password or MFA code) lock the username at that address out (django-axes):
  429 with `Retry-After` until AXES_COOLOFF_HOURS have passed since the last failure.
- Clinicians and staff (and anyone who has enrolled an authenticator) must send `otp`, the current
  TOTP code. Those who must but have no confirmed device get no token until they enrol (on the
  care-team pages, or `manage.py otp_enrol`): deny by default.
"""

from __future__ import annotations

import math
from typing import Any, cast

from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_cool_off
from axes.models import AccessAttempt
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.db.models import Max
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django_otp import devices_for_user, user_has_device
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.exceptions import InvalidToken, TokenError
from rest_framework_simplejwt.serializers import (
    TokenObtainPairSerializer,
    TokenObtainSerializer,
    TokenRefreshSerializer,
)
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.views import TokenViewBase

from api.authentication import ERR_REVOKED, GlucoScopeRefreshToken, token_generation
from api.throttling import LoginAddressThrottle, client_address
from glucoscope.patients import services
from glucoscope.patients.models import Role, User

ERR_LOCKED_OUT = "Too many failed sign-ins for this account from this address; try again later."
ERR_OTP_REQUIRED = "This account uses two-factor authentication: send the current 6-digit code from the authenticator app."
ERR_OTP_NOT_ENROLLED = (
    "Clinician and staff accounts need an authenticator app before they can sign in: sign in once at /care/ "
    "to enrol one, or ask an operator (manage.py otp_enrol)."
)
ERR_BAD_CREDENTIALS = "No active account found with the given credentials"
ERR_REFRESH_NOT_YOURS = "This refresh token does not belong to the signed-in account."
MFA_ROLES = frozenset({Role.CLINICIAN, Role.STAFF})


def mfa_required(user: User) -> bool:
    """Who must pass a second factor: clinicians and staff always, anyone else once they have enrolled."""
    return user.role in MFA_ROLES or user.is_staff or user.is_superuser or user_has_device(user, confirmed=True)


# --- Lockout --------------------------------------------------------------------------------

def lockout_retry_after(request: HttpRequest | Request, username: str) -> int:
    """Seconds until the cool-off ends: it runs from the latest recorded failure."""
    cool_off = get_cool_off(request)  # type: ignore[arg-type]
    if cool_off is None:
        return 0
    latest = AccessAttempt.objects.filter(username=username, ip_address=client_address(request)).aggregate(
        latest=Max("attempt_time")
    )["latest"]
    remaining = (latest + cool_off - timezone.now()).total_seconds() if latest else cool_off.total_seconds()
    return max(1, math.ceil(remaining))


class LockedOut(exceptions.Throttled):
    default_detail = ERR_LOCKED_OUT
    default_code = "locked_out"

    def __init__(self, wait: int) -> None:
        super().__init__(wait=wait, detail=ERR_LOCKED_OUT)


def lockout_response(request: HttpRequest, original_response: HttpResponse | None = None,
                     credentials: dict[str, Any] | None = None) -> HttpResponse:
    """What django-axes answers a locked-out sign-in with: JSON for the API, the sign-in page otherwise."""
    username = str((credentials or {}).get("username") or request.POST.get("username", ""))
    retry_after = lockout_retry_after(request, username)
    response: HttpResponse
    if request.path.startswith("/api/"):
        response = JsonResponse({"detail": ERR_LOCKED_OUT, "code": "locked_out"}, status=status.HTTP_429_TOO_MANY_REQUESTS)
    else:
        response = render(request, "web/locked_out.html", {"minutes": math.ceil(retry_after / 60)},
                          status=status.HTTP_429_TOO_MANY_REQUESTS)
    response["Retry-After"] = str(retry_after)
    return response


# --- Token endpoints ------------------------------------------------------------------------

class SignInSerializer(TokenObtainPairSerializer):
    token_class = GlucoScopeRefreshToken
    otp = serializers.CharField(
        required=False, allow_blank=True, max_length=16, write_only=True,
        help_text="Current TOTP code. Required for clinicians, staff and anyone who has enrolled an authenticator.",
    )

    def _fail(self, username: str) -> None:
        # A wrong second factor counts towards the lockout exactly like a wrong password.
        user_login_failed.send(sender=__name__, credentials={"username": username}, request=self.context["request"])

    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        request: Request = self.context["request"]
        username = str(attrs.get(self.username_field, ""))
        if not AxesProxyHandler.is_allowed(request, {"username": username}):
            raise LockedOut(wait=lockout_retry_after(request, username))
        # simplejwt's base check of the password (axes records a failure); sets self.user.
        TokenObtainSerializer.validate(self, attrs)
        user = cast(User, self.user)
        if mfa_required(user):
            code = str(attrs.get("otp") or "").strip()
            devices = list(devices_for_user(user, confirmed=True))
            if not devices:
                raise exceptions.PermissionDenied(ERR_OTP_NOT_ENROLLED)
            if not code:
                raise serializers.ValidationError({"otp": [ERR_OTP_REQUIRED]})
            if not any(device.verify_token(code) for device in devices):
                self._fail(username)
                raise exceptions.AuthenticationFailed(ERR_BAD_CREDENTIALS, code="no_active_account")
        user_logged_in.send(sender=user.__class__, request=request, user=user)  # axes resets the failures
        refresh = cast(GlucoScopeRefreshToken, self.get_token(user))
        return {"refresh": str(refresh), "access": str(refresh.access_token)}


class RefreshSerializer(TokenRefreshSerializer):
    token_class = GlucoScopeRefreshToken

    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        refresh = self.token_class(attrs["refresh"])  # signature, expiry, blacklist
        user = User.objects.filter(**{jwt_settings.USER_ID_FIELD: refresh.payload.get(jwt_settings.USER_ID_CLAIM)}).first()
        if user is None or not user.is_active:
            # A deleted or deactivated account: 401, never a 500 from a missing row.
            raise exceptions.AuthenticationFailed(self.error_messages["no_active_account"], "no_active_account")
        if token_generation(refresh) != user.token_generation:
            raise InvalidToken({"detail": ERR_REVOKED, "code": "token_revoked"})
        return super().validate(attrs)


TokenPair = inline_serializer("TokenPair", {"access": serializers.CharField(), "refresh": serializers.CharField()})
ErrorDetail = inline_serializer("AuthError", {"detail": serializers.CharField()})


class TokenObtainApi(TokenViewBase):
    """`{"username", "password", "otp"?}` → `{"access", "refresh"}`."""

    serializer_class = SignInSerializer
    throttle_classes = [LoginAddressThrottle]

    @extend_schema(
        summary="Sign in",
        description=(
            "Exchange a username and password (plus `otp`, the current TOTP code, for clinicians, staff and "
            "anyone who has enrolled an authenticator) for a short-lived access token and a rotating refresh "
            "token. Repeated failures lock the username out from this address: 429 with `Retry-After`."
        ),
        responses={200: TokenPair, 400: OpenApiResponse(description="Missing field (including `otp`)."),
                   401: ErrorDetail, 403: ErrorDetail, 429: ErrorDetail},
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().post(request, *args, **kwargs)


class TokenRefreshApi(TokenViewBase):
    serializer_class = RefreshSerializer
    throttle_classes = [LoginAddressThrottle]

    @extend_schema(
        summary="Refresh the access token",
        description="A valid refresh token → a new access token and a new refresh token; the one sent is blacklisted.",
        responses={200: TokenPair, 401: ErrorDetail, 429: ErrorDetail},
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().post(request, *args, **kwargs)


class LogoutInput(serializers.Serializer):
    refresh = serializers.CharField(help_text="The refresh token to revoke.")


class LogoutApi(APIView):
    """Ends one session: the refresh token is blacklisted (the short-lived access token expires on its own)."""

    @extend_schema(
        summary="Sign out (revoke one refresh token)",
        description=(
            "Blacklists the given refresh token of the signed-in person, so it can no longer be refreshed. "
            "To end every session and invalidate access tokens at once, use `auth/revoke-all`."
        ),
        request=LogoutInput, responses={204: None, 400: OpenApiResponse(description="`refresh` missing or invalid.")},
    )
    def post(self, request: Request) -> Response:
        body = LogoutInput(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            services.refresh_token_revoke(user=cast(User, request.user), refresh=body.validated_data["refresh"])
        except TokenError as exc:
            raise serializers.ValidationError({"refresh": [str(exc)]}) from None
        return Response(status=status.HTTP_204_NO_CONTENT)


class RevokeAllApi(APIView):
    """Signs the caller out everywhere: every refresh token is blacklisted and every access token refused at once."""

    @extend_schema(
        summary="Revoke every token of the caller",
        description=(
            "Every access and refresh token issued to the signed-in person so far stops working immediately, "
            "including the one used for this call. Use after a lost phone or a suspected leak."
        ),
        request=None,
        responses={200: inline_serializer("RevokeAll", {"revoked_refresh_tokens": serializers.IntegerField()})},
    )
    def post(self, request: Request) -> Response:
        count = services.user_tokens_revoke_all(user=cast(User, request.user))
        return Response({"revoked_refresh_tokens": count})

