"""Credentials other than people's Bearer tokens: vendor API keys and Nightscout secrets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from glucoscope.patients.credentials import nightscout_secret_digest, nightscout_token_digest
from glucoscope.patients.models import NightscoutCredential, VendorApiKey

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
    key_id: str
    role = "vendor"

    @property
    def pk(self) -> str:
        return f"vendor:{self.vendor_id}"


@dataclass(frozen=True, slots=True)
class NightscoutPrincipal(MachinePrincipal):
    """A Nightscout uploader: the credential identifies one patient."""

    patient_id: int
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
        return VendorPrincipal(vendor_id=api_key.vendor_id, key_id=api_key.pk), api_key

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class NightscoutAuthentication(authentication.BaseAuthentication):
    """`api-secret: sha1(secret)` as uploaders send it, or a Nightscout-style `token` (query or api-secret)."""

    def authenticate(self, request: Request) -> tuple[NightscoutPrincipal, Any] | None:
        secret = request.META.get("HTTP_API_SECRET", "").strip()
        token = request.query_params.get("token", "").strip()
        if not secret and not token:
            return None
        credential = None
        if secret:
            credential = (
                NightscoutCredential.objects.filter(secret_digest=nightscout_secret_digest(secret)).first()
                or NightscoutCredential.objects.filter(token_digest=nightscout_token_digest(secret)).first()
            )
        elif token:
            credential = NightscoutCredential.objects.filter(token_digest=nightscout_token_digest(token)).first()
        if credential is None:
            raise exceptions.AuthenticationFailed(ERR_BAD_NIGHTSCOUT_SECRET)
        return NightscoutPrincipal(patient_id=credential.patient_id), credential

    def authenticate_header(self, request: Request) -> str:
        return "api-secret"
