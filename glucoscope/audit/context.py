"""What one request touched, collected as it runs and written once at its end (see middleware.py).

Views and services call `audit_note()` when they read or change a patient's data that the
URL does not name (lists, batches, the caller's own record). Outside a request (Celery tasks,
management commands) there is no person to attribute the access to, so notes are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class RequestAudit:
    # Insertion-ordered set of (patient id, action or None for "derive it from the HTTP method").
    notes: dict[tuple[int, str | None], None] = field(default_factory=dict)
    # Patients whose entries a service already wrote inside its own transaction (account deletion).
    written: set[int] = field(default_factory=set)


_current: ContextVar[RequestAudit | None] = ContextVar("glucoscope_request_audit", default=None)


def begin() -> tuple[RequestAudit, object]:
    state = RequestAudit()
    return state, _current.set(state)


def end(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]


def current() -> RequestAudit | None:
    return _current.get()


def audit_note(*, patient_ids: Iterable[int | None], action: str | None = None) -> None:
    """Record (at the end of this request) that these patients' data was read or changed.

    `action` defaults to the one the HTTP method implies (GET read, POST create, …).
    """
    state = _current.get()
    if state is None:
        return
    for patient_id in patient_ids:
        if patient_id is not None:
            state.notes[(int(patient_id), action)] = None
