"""Request budgets (OWASP API4:2023): one per person, per vendor key, per Nightscout credential and per address.

Each class counts only its own kind of caller, so a busy vendor key cannot use up a patient's
budget and an uploader secret is not limited by the anonymous rate. Over budget, DRF answers
429 with `Retry-After` (api.errors keeps DRF's handler for that).
"""

from __future__ import annotations

from typing import Any, cast

from django.conf import settings
from django.http import HttpRequest
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from api.authentication import NightscoutPrincipal, VendorPrincipal
from glucoscope.cache import count_in_window
from glucoscope.patients.models import User


def client_address(request: HttpRequest | Request) -> str:
    """The caller's address: X-Forwarded-For only as far as TRUSTED_PROXY_COUNT proxies vouch for it."""
    remote = str(request.META.get("REMOTE_ADDR", ""))
    proxies: int = settings.TRUSTED_PROXY_COUNT
    forwarded = str(request.META.get("HTTP_X_FORWARDED_FOR", ""))
    if proxies <= 0 or not forwarded:
        return remote
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    # Each trusted proxy appends the address it saw; anything further left is client-supplied.
    return hops[-min(proxies, len(hops))] if hops else remote


class _LiveRateThrottle(SimpleRateThrottle):
    """A fixed-window counter per caller, with the rate read on every request.

    DRF's SimpleRateThrottle keeps every request's timestamp in one cached list, read and written
    back (pickled) on every request: two round trips to Redis, and for a busy key up to thousands
    of floats each way. A counter per window is one round trip (INCR). The price is the usual one
    of fixed windows: a caller can spend its budget at the end of one window and again at the
    start of the next. `Retry-After` is the time left in the window.

    DRF copies DEFAULT_THROTTLE_RATES into a class attribute when the module is imported, so a
    changed setting (tests, or a reloaded configuration) would otherwise be ignored.
    """

    wait_seconds: float = 0.0
    # Set by SimpleRateThrottle.__init__ from the rate.
    num_requests: int
    duration: int

    def allow_request(self, request: Request, view: Any) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        now = self.timer()
        window_start = int(now // self.duration) * self.duration
        self.wait_seconds = window_start + self.duration - now
        return count_in_window(f"{self.key}:{window_start}", self.duration + 1) <= self.num_requests

    def wait(self) -> float:
        return self.wait_seconds

    def get_rate(self) -> str | None:
        rates = cast(dict[str, str | None], api_settings.DEFAULT_THROTTLE_RATES)
        return rates.get(self.scope) if self.scope else None

    def principal_key(self, request: Request) -> str | None:
        raise NotImplementedError

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        ident = self.principal_key(request)
        return None if ident is None else self.cache_format % {"scope": self.scope, "ident": ident}


class AnonymousAddressThrottle(_LiveRateThrottle):
    scope = "anon"

    def principal_key(self, request: Request) -> str | None:
        return client_address(request) if request.user is None else None


class PersonThrottle(_LiveRateThrottle):
    scope = "user"

    def principal_key(self, request: Request) -> str | None:
        return str(request.user.pk) if isinstance(request.user, User) else None


class VendorKeyThrottle(_LiveRateThrottle):
    """Per key, not per vendor: a vendor rotating keys has two budgets only during the grace period."""

    scope = "vendor_key"

    def principal_key(self, request: Request) -> str | None:
        return request.user.key_id if isinstance(request.user, VendorPrincipal) else None


class NightscoutCredentialThrottle(_LiveRateThrottle):
    scope = "nightscout"

    def principal_key(self, request: Request) -> str | None:
        return str(request.user.credential_id) if isinstance(request.user, NightscoutPrincipal) else None


class LoginAddressThrottle(_LiveRateThrottle):
    """Sign-in and refresh attempts per address, whoever is (or claims to be) calling."""

    scope = "login"

    def principal_key(self, request: Request) -> str | None:
        return client_address(request)
