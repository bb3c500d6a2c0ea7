"""The ids that follow one unit of work through the logs: the HTTP request and the Celery task."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("glucoscope_request_id", default=None)
task_id_var: ContextVar[str | None] = ContextVar("glucoscope_task_id", default=None)
task_name_var: ContextVar[str | None] = ContextVar("glucoscope_task_name", default=None)

# A client may choose its id (to correlate with its own logs), but it lands in our log lines
# and response headers, so only a short token of safe characters is kept: no spaces, quotes,
# newlines (log forging) or anything a log viewer might interpret.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{8,64}")


def request_id_from_client(raw: str | None) -> str:
    """The client's X-Request-ID if it is a safe token, otherwise a fresh one."""
    if raw and _CLIENT_ID.fullmatch(raw):
        return raw
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return request_id_var.get()
