"""Celery workers keep their database connection between tasks and drop it when Django would."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from django.db import connection

from glucoscope.database_connections import recycle_database_connections


@pytest.mark.usefixtures("transactional_db")
def test_a_connection_is_kept_between_tasks_until_it_is_older_than_conn_max_age() -> None:
    if connection.vendor == "sqlite":
        pytest.skip("Django never closes an in-memory SQLite test database; the workers run on PostgreSQL")
    connection.ensure_connection()
    opened = connection.connection
    recycle_database_connections(task=None)
    if connection.settings_dict["CONN_MAX_AGE"]:
        assert connection.connection is opened  # reused: no new backend per task
    connection.close_at = time.monotonic() - 1  # as if CONN_MAX_AGE had passed
    recycle_database_connections(task=None)
    assert connection.connection is None


@pytest.mark.usefixtures("transactional_db")
def test_an_eager_task_leaves_the_callers_connection_alone() -> None:
    connection.ensure_connection()
    opened = connection.connection
    connection.close_at = time.monotonic() - 1
    eager_task = SimpleNamespace(request=SimpleNamespace(is_eager=True))
    recycle_database_connections(task=eager_task)  # type: ignore[arg-type]
    assert connection.connection is opened
