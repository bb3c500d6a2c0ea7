"""Private Redis, PostgreSQL, Celery workers and gunicorn for fault tests.

Fault tests stop and restart these services; they must never touch the shared PostgreSQL
(5432) or Redis (6379) that other test runs and developers use. Each service here runs on a
free loopback port, in a temporary directory, and is torn down by the fixture that made it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

REPO_ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("GLUCOSCOPE_PG_BIN", "/usr/lib/postgresql/15/bin"))
TEST_SECRET_KEY = "test-only-secret-key-not-for-production-0123456789"


def unavailable(reason: str) -> None:
    """Skip, or fail under GLUCOSCOPE_REQUIRE_SERVICES=1 (CI), when a service cannot be started."""
    if os.environ.get("GLUCOSCOPE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"Fault-test services required but unavailable: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], object], *, timeout: float, what: str, interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"Timed out after {timeout:.0f} s waiting for {what}")


class PrivateRedis:
    """A redis-server child process without persistence: a restart loses every queued message, like a crash."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            unavailable("redis-server is not installed")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def is_up(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(self.is_up, timeout=10, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (initdb into a temporary directory, pg_ctl on a free port).

    initdb refuses to run as root, so as root the cluster belongs to the `postgres` system user.
    Durability settings are off: the tests stop the server cleanly (`pg_ctl stop -m fast` writes a
    checkpoint), and speed matters more than surviving a power cut here.
    """

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            unavailable(f"PostgreSQL server binaries not found in {PG_BIN} (set GLUCOSCOPE_PG_BIN)")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="glucoscope-faults-pg-"))
        self.data = self.root / "data"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, user="postgres")

    def _run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, check=False)

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        result = self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        if result.returncode:
            unavailable(f"initdb failed: {result.stderr.decode()[-500:]}")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
                   " -c synchronous_commit=off -c full_page_writes=off -c max_connections=60")
        result = self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w",
                           "-t", "30", "start")
        if result.returncode:
            raise RuntimeError(f"pg_ctl start failed: {result.stderr.decode()}{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def log_tail(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM a child and reap it, escalating to SIGKILL if it has not exited after 15 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def service_env(*, database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a web or worker child process: production mode, pointed at the given services."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": os.environ.get("SECRET_KEY") or TEST_SECRET_KEY,
        "DEBUG": "false",
        "SECURE_SSL_REDIRECT": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "THROTTLE_USER_RATE": "1000000/min",
        "THROTTLE_ANON_RATE": "1000000/min",
        "LOG_LEVEL": "INFO",
        **extra,
    }


class CeleryWorker:
    """One `celery worker` process (solo pool: the task runs in the process we kill)."""

    def __init__(self, *, env: dict[str, str], log_path: Path, name: str,
                 queues: str = "ingest,forecasting,notifications,batch", wait: bool = True) -> None:
        self.log_path = log_path
        self.name = name
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "glucoscope", "worker", "-Q", queues, "--pool=solo",
             "--concurrency=1", "--without-gossip", "--without-mingle", "--without-heartbeat",
             "-n", f"{name}@%h", "--loglevel=INFO"],
            cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Block until the worker consumes (start it with wait=False to start other processes meanwhile)."""
        try:
            wait_until(lambda: b" ready." in self.log_path.read_bytes() or self.process.poll() is not None,
                       timeout=120, what=f"worker {self.name} to start", interval=0.1)
        except AssertionError:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise RuntimeError(f"Celery worker {self.name} exited at start:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers run, nothing is acknowledged or released by the worker itself."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()

    def stop(self) -> None:
        terminate(self.process)
        self._log.close()


class WebServer:
    """gunicorn serving glucoscope.wsgi, as in production, on a free loopback port."""

    def __init__(self, *, env: dict[str, str], log_path: Path, workers: int = 1, threads: int = 4,
                 wait: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "glucoscope.wsgi", "-w", str(workers), "--threads", str(threads),
             "-b", f"127.0.0.1:{self.port}", "--timeout", "120", "--graceful-timeout", "5", "--preload"],
            cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        def answers() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited at start:\n{self.log()[-3000:]}")
            try:
                # The first request imports the URLconf and views: slow on a busy 2-core machine.
                return httpx.get(f"{self.url}/healthz", timeout=60).status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_until(answers, timeout=150, what="gunicorn to answer /healthz", interval=0.2)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        terminate(self.process)
        self._log.close()


@contextlib.contextmanager
def celery_publishing_to(broker_url: str) -> Iterator[None]:
    """Point this process's Celery app (on-commit publishes, the outbox sweeper) at another broker, then back."""
    from glucoscope.celery import app

    previous = app.conf.broker_url

    def switch(url: str) -> None:
        app.conf.broker_url = url
        # The app caches its connection and producer pools; drop the references so the next publish looks
        # up the pools for the new URL. Not closed: kombu keeps one pool per URL for the whole process, and
        # a closed one would be handed back when the app switches back.
        app._pool = None
        app.amqp._producer_pool = None

    switch(broker_url)
    try:
        yield
    finally:
        switch(previous)


@contextlib.contextmanager
def private_redis_published_to() -> Iterator[PrivateRedis]:
    """A started private Redis that this process's Celery app publishes to until the block ends; then stopped."""
    server = PrivateRedis()
    server.start()
    try:
        with celery_publishing_to(server.url()):
            yield server
    finally:
        server.stop()
