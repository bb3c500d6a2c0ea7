"""Writing audit entries: one INSERT per request, however many patients it touched."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone

from glucoscope.audit import context
from glucoscope.audit.models import ActorKind, AuditAction, AuditEntry

METHOD_ACTIONS = {"GET": AuditAction.READ, "HEAD": AuditAction.READ, "POST": AuditAction.CREATE,
                  "PUT": AuditAction.UPDATE, "PATCH": AuditAction.UPDATE, "DELETE": AuditAction.DELETE}
_VENDOR_NAME_TTL_SECONDS = 300.0
# vendor id → (name, monotonic expiry). Vendor names rarely change; caching them keeps a vendor
# batch at exactly one extra statement (the INSERT) instead of an extra SELECT per request.
_vendor_names: dict[int, tuple[str, float]] = {}


@dataclass(frozen=True, slots=True)
class Actor:
    kind: str
    label: str
    user_id: int | None = None
    name: str = ""
    role: str = ""


SYSTEM_ACTOR = Actor(kind=ActorKind.SYSTEM, label="system")


@dataclass(frozen=True, slots=True)
class RequestInfo:
    route: str = ""
    method: str = ""
    path: str = ""
    ip: str | None = None
    request_id: str = ""


def _vendor_name(vendor_id: int) -> str:
    cached = _vendor_names.get(vendor_id)
    if cached and cached[1] > time.monotonic():
        return cached[0]
    from glucoscope.patients.models import VendorOrganization

    name = VendorOrganization.objects.filter(pk=vendor_id).values_list("name", flat=True).first() or str(vendor_id)
    _vendor_names[vendor_id] = (name, time.monotonic() + _VENDOR_NAME_TTL_SECONDS)
    return name


def actor_for(principal: Any) -> Actor | None:
    """The audit identity of request.user; None for anonymous callers (they reach no patient data)."""
    from api.authentication import NightscoutPrincipal, VendorPrincipal
    from glucoscope.patients.models import User

    if isinstance(principal, User) and principal.is_authenticated:
        return Actor(kind=ActorKind.USER, label=principal.username, user_id=principal.pk,
                     name=principal.get_full_name(), role=principal.role)
    if isinstance(principal, VendorPrincipal):
        return Actor(kind=ActorKind.VENDOR, label=f"vendor:{_vendor_name(principal.vendor_id)}", role="vendor")
    if isinstance(principal, NightscoutPrincipal):
        return Actor(kind=ActorKind.NIGHTSCOUT, label=f"nightscout:patient {principal.patient_id}", role="nightscout")
    return None


def _valid_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def client_ip(request: HttpRequest) -> str | None:
    """REMOTE_ADDR; behind TRUSTED_PROXY_COUNT proxies, the X-Forwarded-For hop the outermost one appended.

    X-Forwarded-For is client-controlled, so with no trusted proxy configured (the default) it is
    ignored; with N proxies only the N-th entry from the right, the one they wrote, is believed
    (the same rule as DRF's NUM_PROXIES, so the audit and the throttles agree on the address).
    """
    remote = request.META.get("REMOTE_ADDR") or ""
    proxies: int = getattr(settings, "TRUSTED_PROXY_COUNT", 0)
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies > 0 and forwarded:
        hops = [h.strip() for h in forwarded.split(",")]
        candidate = hops[-min(proxies, len(hops))]
        if _valid_ip(candidate):
            return candidate
    return remote if _valid_ip(remote) else None


def _request_id(request: HttpRequest) -> str:
    try:  # the observability middleware, where installed, assigns every request an id
        from glucoscope.observability.context import current_request_id

        request_id = current_request_id()
    except ImportError:  # pragma: no cover - observability is optional
        request_id = None
    raw = request_id or getattr(request, "request_id", "") or request.META.get("HTTP_X_REQUEST_ID", "")
    return "".join(c for c in str(raw) if c.isalnum() or c in "._:-")[:64]


def request_info(request: HttpRequest) -> RequestInfo:
    match = getattr(request, "resolver_match", None)
    return RequestInfo(
        route=(match.view_name if match else "")[:120], method=(request.method or "")[:8], path=request.path[:500],
        ip=client_ip(request), request_id=_request_id(request),
    )


def audit_entries_record(*, actor: Actor, info: RequestInfo, accesses: Iterable[tuple[int, str]],
                         status_code: int | None = None, at: datetime | None = None) -> int:
    """Append one entry per (patient, action) in a single INSERT; returns how many."""
    moment = at or timezone.now()
    rows = [
        AuditEntry(
            at=moment, actor_kind=actor.kind, actor_user_id=actor.user_id, actor_label=actor.label[:200],
            actor_name=actor.name[:300], actor_role=actor.role[:16], patient_id=patient_id, action=action,
            route=info.route, method=info.method, path=info.path, status_code=status_code, ip=info.ip,
            request_id=info.request_id,
        )
        for patient_id, action in dict.fromkeys(accesses)
    ]
    if len(rows) == 1:
        # The common case, every single-patient request. One INSERT is atomic on its own, and
        # bulk_create would wrap it in BEGIN/COMMIT: two more round trips on every request.
        rows[0].save(force_insert=True)
    elif rows:
        AuditEntry.objects.bulk_create(rows)
    return len(rows)


def audit_record_now(*, request: HttpRequest | None, actor: Actor, patient_id: int, action: str,
                     status_code: int | None = None) -> None:
    """Write an entry at once (inside the caller's transaction), not at the end of the request.

    For changes that must commit together with their audit entry, such as account deletion: the
    entry cannot be lost if the request dies afterwards, and it is not written twice.
    """
    info = request_info(request) if request is not None else RequestInfo()
    audit_entries_record(actor=actor, info=info, accesses=[(patient_id, action)], status_code=status_code)
    state = context.current()
    if state is not None:
        state.written.add(patient_id)


def admin_object_patient_id(*, app_label: str, model_name: str, object_id: str) -> int | None:
    """The patient an admin object is about: the patient, a patient's user, or a row with a `patient` field."""
    from django.apps import apps

    from glucoscope.patients.models import Patient, User

    try:
        model = apps.get_model(app_label, model_name)
    except LookupError:
        return None
    if model is Patient:
        return int(object_id) if str(object_id).isdigit() else None
    if model is User:
        return Patient.objects.filter(user_id=object_id).values_list("pk", flat=True).first() if str(object_id).isdigit() else None
    if not any(field.name == "patient" for field in model._meta.get_fields()):
        return None
    try:
        value = model._default_manager.filter(pk=object_id).values_list("patient_id", flat=True).first()
    except (ValueError, TypeError):
        return None
    return int(value) if value is not None else None


def action_for_method(method: str) -> str | None:
    return METHOD_ACTIONS.get(method.upper())
