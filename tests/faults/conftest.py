"""Fixtures for the fault tests: private Redis and PostgreSQL that the tests may stop, kill and restart.

Nothing here touches the shared PostgreSQL (5432) or Redis (6379). Services are shared per
module (or per session for the PostgreSQL cluster) to keep the whole tests/faults run short.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from forecasting.models import Forecast
from notifications.fcm_stub import FcmStub
from tests.integration.conftest import real_services  # noqa: F401
from tests.integration.private_services import (
    PG_BIN,
    CeleryWorker,
    PrivatePostgres,
    PrivateRedis,
    private_redis_published_to,
    service_env,
    unavailable,
)


def django_test_db_url() -> str:
    """The pytest-django test database on the shared server (the worker and web children use it too)."""
    database = connection.settings_dict
    return f"postgres://{database['USER']}@{database['HOST']}:{database['PORT'] or 5432}/{database['NAME']}"


def django_test_db_connect(**kwargs: object) -> psycopg.Connection:
    """A separate connection to the test database, outside Django: for holding locks and reading pg_stat_activity."""
    return psycopg.connect(django_test_db_url().replace("postgres://", "postgresql://"), **kwargs)  # type: ignore[arg-type]


@contextlib.contextmanager
def forecast_key_held(*, patient_id: int, origin: datetime, model_version_id: int) -> Iterator[None]:
    """Hold an uncommitted Forecast row for (patient, origin, model version) until the block ends.

    A forecast run for that key then waits on PostgreSQL's unique-index lock right at its INSERT, after
    the model ran: a real, deterministic "in the middle" for the fault tests. Rolled back afterwards.
    """
    blocker = django_test_db_connect()
    try:
        blocker.execute(
            f'INSERT INTO "{Forecast._meta.db_table}" (patient_id, origin, model_version_id, status, reason, points, created_at)'
            " VALUES (%s, %s, %s, 'ok', 'held by the fault test', '[]', now())",
            [patient_id, origin, model_version_id],
        )  # psycopg opened a transaction: the row stays uncommitted and its unique key locked
        yield
    finally:
        blocker.rollback()
        blocker.close()


def backends_waiting_to_insert(conn: psycopg.Connection, table: str) -> int:
    """How many backends of the test database are blocked on a lock while inserting into `table`."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        " AND query LIKE %s",
        [f'INSERT INTO "{table}"%'],
    ).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture(scope="module")
def fault_redis(real_services: None) -> Iterator[PrivateRedis]:  # noqa: F811
    """A private Redis for the module; this process publishes to it (on-commit tasks, the outbox sweeper)."""
    with private_redis_published_to() as server:
        yield server


@pytest.fixture(scope="module")
def fcm_stub_server() -> Iterator[FcmStub]:
    with FcmStub() as stub:
        yield stub


class Workers:
    """The module's one Celery worker at a time: tests kill it and start the next."""

    def __init__(self, env: dict[str, str], directory: Path) -> None:
        self.env = env
        self.directory = directory
        self.count = 0
        self.current: CeleryWorker | None = None

    def start(self, *, wait: bool = True) -> CeleryWorker:
        self.count += 1
        self.current = CeleryWorker(env=self.env, log_path=self.directory / f"worker-{self.count}.log",
                                    name=f"fault-{self.count}", wait=wait)
        return self.current

    def running(self) -> CeleryWorker:
        if self.current is None or self.current.process.poll() is not None:
            return self.start()
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


@pytest.fixture(scope="module")
def fault_workers(
    fault_redis: PrivateRedis, fcm_stub_server: FcmStub, django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    env = service_env(
        database_url=django_test_db_url(), redis_url=fault_redis.url(),
        DATABASE_CONN_MAX_AGE="0",
        FIREBASE_CREDENTIALS_FILE=fcm_stub_server.credentials_file, FCM_ENDPOINT=fcm_stub_server.url,
        # A restarted worker takes back the unacknowledged task of a killed one once it is this old (s).
        CELERY_VISIBILITY_TIMEOUT_SECONDS="3",
    )
    workers = Workers(env, tmp_path_factory.mktemp("workers"))
    try:
        yield workers
    finally:
        workers.stop()


@pytest.fixture(scope="session")
def fault_postgres(django_db_setup: None) -> Iterator[PrivatePostgres]:
    """A private PostgreSQL cluster with the GlucoScope schema, shared by the session.

    The schema is copied from the migrated pytest test database (pg_dump | psql: ~1 s) instead of
    running every migration again (~20 s).
    """
    cluster = PrivatePostgres()
    try:
        cluster.init()
        cluster.start()
        subprocess.run([str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "-q",
                        "-c", "CREATE DATABASE glucoscope"], check=True, capture_output=True)
        dump = subprocess.run(
            [str(PG_BIN / "pg_dump"), "--schema-only", "--no-owner", "--no-privileges", django_test_db_url()],
            check=False, capture_output=True,
        )
        if dump.returncode:
            unavailable(f"pg_dump of the test database failed: {dump.stderr.decode()[-500:]}")
        restore = subprocess.run(
            [str(PG_BIN / "psql"), "-q", "-v", "ON_ERROR_STOP=1", cluster.url("glucoscope")],
            input=dump.stdout, check=False, capture_output=True,
        )
        if restore.returncode:
            raise RuntimeError(f"Loading the schema failed: {restore.stderr.decode()[-2000:]}")
        yield cluster
    finally:
        cluster.destroy()
