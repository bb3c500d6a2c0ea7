"""Credentials: people's Bearer tokens (with revocation), vendor API keys and Nightscout secrets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from django.db.models import Q
from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import InvalidToken
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import RefreshToken, Token

from glucoscope.patients.credentials import nightscout_secret_digest, nightscout_token_digest
from glucoscope.patients.models import NightscoutCredential, User, VendorApiKey
from glucoscope.patients.selectors import user_get_with_patient

GENERATION_CLAIM = "gen"
ERR_REVOKED = "Token has been revoked; sign in again."
ERR_BAD_API_KEY = "Invalid, revoked or expired API key."
ERR_BAD_NIGHTSCOUT_SECRET = "Unknown api-secret or token."
# Recording every use would add a write to every request; minute resolution is enough for audits.
_LAST_USED_RESOLUTION = timedelta(minutes=1)


class MachinePrincipal:
    """request.user for a credential that is not a person; person-only permissions refuse it.

    `pk` keys the per-credential throttles.
    """

    is_authenticated = True
    is_anonymous = False
    is_active = True
    role = ""

    @property
    def pk(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class VendorPrincipal(MachinePrincipal):
    """A vendor organisation's server, identified by one of its API keys."""

    vendor_id: int
    vendor_name: str
    key_id: str
    role = "vendor"

    @property
    def pk(self) -> str:
        return f"vendor:{self.vendor_id}"


@dataclass(frozen=True, slots=True)
class NightscoutPrincipal(MachinePrincipal):
    """A Nightscout uploader: the credential identifies one patient."""

    patient_id: int
    credential_id: int
    role = "nightscout"

    @property
    def pk(self) -> str:
        return f"nightscout:{self.patient_id}"


class VendorApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Api-Key"

    def authenticate(self, request: Request) -> tuple[VendorPrincipal, VendorApiKey] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, key = header.partition(" ")
        if scheme != self.keyword:
            return None
        key = key.strip()
        try:
            api_key = cast(VendorApiKey, VendorApiKey.objects.get_from_key(key))
        except VendorApiKey.DoesNotExist:
            raise exceptions.AuthenticationFailed(ERR_BAD_API_KEY) from None
        if api_key.has_expired:
            raise exceptions.AuthenticationFailed(ERR_BAD_API_KEY)
        now = timezone.now()
        if api_key.last_used_at is None or now - api_key.last_used_at > _LAST_USED_RESOLUTION:
            VendorApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        return VendorPrincipal(vendor_id=api_key.vendor_id, vendor_name=api_key.vendor.name, key_id=api_key.pk), api_key

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class NightscoutAuthentication(authentication.BaseAuthentication):
    """`api-secret: sha1(secret)` as uploaders send it, or a Nightscout-style `token` (query or api-secret)."""

    def authenticate(self, request: Request) -> tuple[NightscoutPrincipal, Any] | None:
        secret = request.META.get("HTTP_API_SECRET", "").strip()
        token = request.query_params.get("token", "").strip()
        if not secret and not token:
            return None
        if secret:
            # The header carries either sha1(secret) or, as some clients send it, the token itself.
            digests = Q(secret_digest=nightscout_secret_digest(secret)) | Q(token_digest=nightscout_token_digest(secret))
        else:
            digests = Q(token_digest=nightscout_token_digest(token))
        now = timezone.now()
        # A rotated credential keeps working until its grace period ends (expires_at), then never again.
        credential = (
            NightscoutCredential.objects.filter(digests)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
            .only("pk", "patient_id")
            .first()
        )
        if credential is None:
            raise exceptions.AuthenticationFailed(ERR_BAD_NIGHTSCOUT_SECRET)
        return NightscoutPrincipal(patient_id=credential.patient_id, credential_id=credential.pk), credential

    def authenticate_header(self, request: Request) -> str:
        return "api-secret"


def token_generation(token: Token) -> int:
    # Tokens minted without the claim (RefreshToken.for_user) belong to generation 0.
    return int(token.payload.get(GENERATION_CLAIM, 0))


class GlucoScopeRefreshToken(RefreshToken):
    """A refresh token stamped with the user's generation; the access tokens made from it inherit the claim."""

    @classmethod
    def for_user(cls, user: Any) -> GlucoScopeRefreshToken:
        token = cast(GlucoScopeRefreshToken, super().for_user(user))
        token[GENERATION_CLAIM] = user.token_generation
        return token


class RevocableJWTAuthentication(JWTAuthentication):
    """simplejwt's Bearer authentication, refusing tokens from before the user's last revocation."""

    def get_user(self, validated_token: Token) -> Any:
        # simplejwt's lookup, in one query with the patient profile: the upload permission and
        # every patient-scoped view read `user.patient`, which would otherwise cost a second query
        # on each request.
        try:
            user_id = validated_token[jwt_settings.USER_ID_CLAIM]
        except KeyError:
            raise InvalidToken("Token contained no recognizable user identification") from None
        try:
            user = user_get_with_patient(user_id=user_id)
        except User.DoesNotExist:
            raise exceptions.AuthenticationFailed("User not found", code="user_not_found") from None
        if not user.is_active:
            raise exceptions.AuthenticationFailed("User is inactive", code="user_inactive")
        if token_generation(validated_token) != user.token_generation:
            raise InvalidToken({"detail": ERR_REVOKED, "code": "token_revoked"})
        return user
