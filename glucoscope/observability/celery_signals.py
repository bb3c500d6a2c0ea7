"""Celery: the originating request id travels in task headers; workers log with task and request ids.

Connected by glucoscope/celery.py, so it is active in every process that has the Celery app.
"""

from __future__ import annotations

import logging.config
from contextvars import Token
from typing import Any

from celery import signals

from glucoscope.observability.context import request_id_var, task_id_var, task_name_var

REQUEST_ID_HEADER = "glucoscope_request_id"
# task id -> tokens to restore when the task ends (a worker runs one task at a time per process,
# but eager mode nests tasks inside a request, so the previous values must come back).
_restore: dict[str, tuple[Token[str | None], Token[str | None], Token[str | None] | None]] = {}


@signals.setup_logging.connect
def _use_django_logging(**kwargs: Any) -> None:
    """Workers log with settings.LOGGING (JSON in production) instead of Celery's own format."""
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@signals.before_task_publish.connect
def _add_request_id(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    request_id = request_id_var.get()
    if request_id and headers is not None:
        headers.setdefault(REQUEST_ID_HEADER, request_id)


@signals.task_prerun.connect
def _enter_task(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    if not task_id:
        return
    origin = getattr(task.request, REQUEST_ID_HEADER, None) if task is not None else None
    _restore[task_id] = (
        task_id_var.set(task_id),
        task_name_var.set(getattr(task, "name", None)),
        request_id_var.set(origin) if origin else None,
    )


@signals.task_postrun.connect
def _leave_task(task_id: str | None = None, **kwargs: Any) -> None:
    tokens = _restore.pop(task_id or "", None)
    if tokens is None:
        return
    task_token, name_token, request_token = tokens
    if request_token is not None:
        request_id_var.reset(request_token)
    task_name_var.reset(name_token)
    task_id_var.reset(task_token)
