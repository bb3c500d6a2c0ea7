"""Records every read and change of a patient's data, one INSERT at the end of each request.

Where the entries come from, so that a new endpoint is audited without anyone remembering to:

1. The URL names the patient (`patient_id`): every route under `patients/<id>/` in the API and
   the care-team pages. When the response is a success (< 400: the selector granted access and
   data was served or changed) the patient gets an entry. Refusals answer 404 and are not an access.
2. The view is about the caller's own record (`audit_self = True` on the view class, the
   `me/...` routes): a signed-in patient gets an entry for themselves.
3. Views that touch patients the URL does not name (the patient list, ingest batches, the
   Nightscout API, the dashboard, notifications for followers) call `audit_note()`.
4. Staff opening one object about a patient in the Django admin (the patient, their user, or any
   row with a `patient` field): its change, delete or history page.

The action is the view's `audit_action` if it sets one (exports), else what the HTTP method
implies. tests/security/test_audit.py walks the URL configuration and fails for any route that
serves a patient's data without leaving an entry.

The entries are written before the response leaves (a streamed body is sent after), so if the
audit cannot be written the caller gets an error rather than unaudited data (a 503 with
Retry-After when the database is unreachable: `handler500`, api/errors.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponseBase

from glucoscope.audit import context
from glucoscope.audit.models import AuditAction
from glucoscope.audit.services import (
    action_for_method,
    actor_for,
    admin_object_patient_id,
    audit_entries_record,
    request_info,
)

PATIENT_URL_KWARG = "patient_id"


def _view_class(request: HttpRequest) -> Any:
    match = getattr(request, "resolver_match", None)
    return getattr(match.func, "view_class", None) if match else None


def _own_patient_id(principal: Any) -> int | None:
    from glucoscope.patients.models import Role, User

    if isinstance(principal, User) and principal.role == Role.PATIENT:
        patient = getattr(principal, "patient", None)
        return patient.pk if patient is not None else None
    return None


def accesses_of(request: HttpRequest, response: HttpResponseBase, state: context.RequestAudit) -> list[tuple[int, str]]:
    view_class = _view_class(request)
    default_action = getattr(view_class, "audit_action", None) or action_for_method(request.method or "")
    accesses: dict[tuple[int, str], None] = {}
    for patient_id, action in state.notes:
        chosen = action or default_action
        if chosen:
            accesses[(patient_id, chosen)] = None
    noted = {patient_id for patient_id, _ in accesses} | state.written
    if default_action and response.status_code < 400:
        match = getattr(request, "resolver_match", None)
        raw = match.kwargs.get(PATIENT_URL_KWARG) if match else None
        candidates = [int(raw)] if raw is not None and str(raw).isdigit() else []
        if getattr(view_class, "audit_self", False):
            candidates.append(_own_patient_id(getattr(request, "user", None)) or 0)
        for patient_id in candidates:
            if patient_id and patient_id not in noted:
                accesses[(patient_id, default_action)] = None
    admin = _admin_object_access(request) if response.status_code < 400 else None
    if admin is not None and admin[0] not in noted:
        accesses[admin] = None
    return list(accesses)


def _admin_object_access(request: HttpRequest) -> tuple[int, str] | None:
    """Staff opening one object about a patient in the Django admin (change, delete or history page)."""
    match = getattr(request, "resolver_match", None)
    if match is None or not match.view_name.startswith("admin:") or "object_id" not in match.kwargs:
        return None
    parts = match.view_name.removeprefix("admin:").rsplit("_", 2)
    if len(parts) != 3:
        return None
    app_label, model_name, page = parts
    patient_id = admin_object_patient_id(app_label=app_label, model_name=model_name, object_id=match.kwargs["object_id"])
    if patient_id is None:
        return None
    posted = request.method == "POST"
    action = {"change": AuditAction.UPDATE, "delete": AuditAction.DELETE}.get(page, AuditAction.READ) if posted else AuditAction.READ
    return patient_id, action


class AuditMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        state, token = context.begin()
        try:
            response = self.get_response(request)
            accesses = accesses_of(request, response, state)
            if accesses:
                # DRF sets the authenticated principal (person, vendor key, uploader) on the Django request.
                actor = actor_for(getattr(request, "user", None))
                if actor is not None:
                    audit_entries_record(actor=actor, info=request_info(request), accesses=accesses,
                                         status_code=response.status_code)
            return response
        finally:
            context.end(token)
