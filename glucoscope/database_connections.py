"""Database connections in Celery workers: kept between tasks, and dropped when broken or too old.

Django recycles connections around each web request (`close_old_connections` on request
started/finished): a connection older than CONN_MAX_AGE, or one that failed and no longer answers,
is closed and the next query opens a new one. Workers get the same treatment around each task.
Celery's own handling would instead close every connection around every task
(settings.CELERY_DB_REUSE_MAX turns that off).
"""

from __future__ import annotations

from typing import Any

from celery import Task, signals
from django.db import close_old_connections


@signals.task_prerun.connect
@signals.task_postrun.connect
def recycle_database_connections(task: Task | None = None, **kwargs: Any) -> None:
    # An eager task runs inside the caller's request or test transaction, whose connection
    # is not the task's to close.
    if task is not None and getattr(task.request, "is_eager", False):
        return
    close_old_connections()
