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

import pytest
import redis
from django.conf import settings
from django.db import connection

REPO_ROOT = Path(__file__).resolve().parents[2]
REDIS_RESTART = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379", "--save", "", "--appendonly", "no"]


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


@pytest.fixture
def celery_worker_process(real_services: None, transactional_db: None, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real `celery worker` process on every queue, connected to the test database."""
    database = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": settings.SECRET_KEY,
        "DEBUG": "false",
        "DATABASE_CONN_MAX_AGE": "0",
    }
    from glucoscope.celery import app

    app.control.purge()
    log_path = tmp_path / "worker.log"
    log = open(log_path, "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "glucoscope", "worker", "-Q", "ingest,forecasting,notifications",
         "--pool=solo", "--concurrency=1", "--without-gossip", "--without-mingle", "-n", f"it-{os.getpid()}@%h",
         "--loglevel=INFO"],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: b"ready" in log_path.read_bytes() or worker.poll() is not None, timeout=60, what="worker start")
        if worker.poll() is not None:
            pytest.fail(f"Celery worker exited at start:\n{log_path.read_text()[-3000:]}")
        worker.log_path = log_path  # type: ignore[attr-defined]
        yield worker
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
        if not redis_is_up():
            subprocess.run(REDIS_RESTART, check=False)
