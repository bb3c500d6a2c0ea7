"""Real services for integration tests: PostgreSQL, Redis and a Celery worker process.

Where they are missing the tests skip, except under GLUCOSCOPE_REQUIRE_SERVICES=1
(set by .ci/run), where a missing service fails the run instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connection

from tests.integration.private_services import PrivateRedis, private_redis_published_to

REPO_ROOT = Path(__file__).resolve().parents[2]


def _unavailable(reason: str) -> None:
    if os.environ.get("GLUCOSCOPE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"Integration services required but unavailable: {reason}")
    pytest.skip(f"{reason}; set DATABASE_URL=postgres://… and REDIS_URL=redis://… to run integration tests")


@pytest.fixture(scope="session")
def real_services() -> None:
    if not settings.DATABASE_IS_POSTGRES:
        _unavailable("DATABASE_URL is not PostgreSQL")
    if not settings.REDIS_URL:
        _unavailable("REDIS_URL is not set")
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        _unavailable(f"Redis at {settings.REDIS_URL} is not reachable ({exc})")


def wait_for(condition: Callable[[], object], *, timeout: float = 30.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"Timed out after {timeout:.0f} s waiting for {what}")


def redis_is_up() -> bool:
    try:
        return bool(redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


WorkerFactory = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def celery_worker_factory(real_services: None, transactional_db: None, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start real `celery worker` processes connected to the test database: `start(queues=..., name=...)`.

    Each worker's combined output is in `worker.log_path`. Workers started together come up in
    parallel; call `start(..., wait=False)` for each, then `wait_ready(worker)`. All are stopped at teardown.
    """
    database = connection.settings_dict
    base_env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": settings.SECRET_KEY,
        "DEBUG": "false",
        "DATABASE_CONN_MAX_AGE": "0",
    }
    from glucoscope.celery import app

    app.control.purge()
    started: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(*, queues: str = "ingest,forecasting,notifications,batch", name: str = "it", wait: bool = True,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log_path = tmp_path / f"worker-{name}.log"
        log = open(log_path, "wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "glucoscope", "worker", "-Q", queues,
             "--pool=solo", "--concurrency=1", "--without-gossip", "--without-mingle", "-n", f"{name}-{os.getpid()}@%h",
             "--loglevel=INFO"],
            cwd=REPO_ROOT, env={**base_env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
        )
        worker.log_path = log_path  # type: ignore[attr-defined]
        started.append((worker, log))
        if wait:
            wait_ready(worker)
        return worker

    try:
        yield start
    finally:
        for worker, _ in started:
            worker.terminate()
        for worker, log in started:
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
            log.close()


def wait_ready(worker: subprocess.Popen[bytes]) -> None:
    log_path: Path = worker.log_path  # type: ignore[attr-defined]
    wait_for(lambda: b"ready" in log_path.read_bytes() or worker.poll() is not None, timeout=90, what="worker start")
    if worker.poll() is not None:
        pytest.fail(f"Celery worker exited at start:\n{log_path.read_text()[-3000:]}")


@pytest.fixture
def private_redis(real_services: None) -> Iterator[PrivateRedis]:
    """A Redis of this test's own, which it may stop and restart; this process publishes to it meanwhile.

    Outage tests use it so the suite never shuts down the shared Redis other runs depend on.
    """
    with private_redis_published_to() as server:
        yield server


@pytest.fixture
def celery_worker_process(celery_worker_factory: WorkerFactory) -> subprocess.Popen[bytes]:
    """A real `celery worker` process on every queue, connected to the test database and the shared Redis."""
    return celery_worker_factory()


@pytest.fixture
def celery_worker_private_redis(private_redis: PrivateRedis, celery_worker_factory: WorkerFactory) -> subprocess.Popen[bytes]:
    """The same worker on the test's private Redis, for tests that stop and restart Redis."""
    return celery_worker_factory(env={"REDIS_URL": private_redis.url()})
