"""Start gunicorn and Celery workers on loopback for a load run, and always stop them again.

Each child runs in its own session (process group), so gunicorn's and Celery's worker children
are stopped with their parent, and a Ctrl-C in the terminal reaches only this process, which
then stops them in order instead of leaving orphans behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx


class StackError(RuntimeError):
    """A process did not start; the message carries the tail of its log."""


@dataclass(frozen=True, slots=True)
class StackConfig:
    database_url: str
    redis_url: str
    secret_key: str
    web_workers: int = 2
    web_threads: int = 16
    conn_max_age: int = 60
    # queue name -> worker processes for it
    celery: dict[str, int] = field(default_factory=lambda: {"ingest": 1, "forecasting": 1, "notifications": 1})
    # Scheduling niceness of the Celery workers (0 = same as the web tier). The web tier answers
    # people waiting on a request; the workers batch whatever has queued up, so on shared cores
    # they should yield to it (docs/scaling.md: the same as Nice= / CPUWeight= in production).
    worker_nice: int = 10


@dataclass(slots=True)
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Interrupted(BaseException):
    """SIGTERM turned into an exception, so the same clean-up runs as for Ctrl-C."""


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


@contextmanager
def sigterm_as_exception() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Stack:
    """gunicorn + one Celery worker per queue, with logs under `log_dir`."""

    def __init__(self, config: StackConfig, *, base_dir: Path, log_dir: Path) -> None:
        self.config = config
        self.base_dir = base_dir
        self.log_dir = log_dir
        self.children: list[Child] = []
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.config.database_url,
            "REDIS_URL": self.config.redis_url,
            "SECRET_KEY": self.config.secret_key,
            "DEBUG": "false",
            # Plain HTTP on loopback; production keeps the redirect, HSTS and secure cookies.
            "SECURE_SSL_REDIRECT": "false",
            "ALLOWED_HOSTS": "127.0.0.1",
            "LOG_LEVEL": "WARNING",
            "DATABASE_CONN_MAX_AGE": str(self.config.conn_max_age),
            # One math thread per process: torch and numpy would otherwise each start one per
            # core in every worker and fight over the two cores.
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
        }

    def _spawn(self, name: str, argv: list[str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, cwd=self.base_dir, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def start(self, *, timeout: float = 90.0) -> None:
        config = self.config
        web = self._spawn("gunicorn", [
            sys.executable, "-m", "gunicorn", "glucoscope.wsgi", "-b", f"127.0.0.1:{self.port}",
            "-w", str(config.web_workers), "-k", "gthread", "--threads", str(config.web_threads),
            "--backlog", "2048", "--timeout", "60", "--keep-alive", "30", "--log-level", "warning",
        ])
        names = []
        for queue, processes in config.celery.items():
            name = f"load-{queue}-{os.getpid()}@127.0.0.1"
            names.append(name)
            self._spawn(f"celery-{queue}", [
                "nice", "-n", str(config.worker_nice), sys.executable, "-m", "celery", "-A", "glucoscope", "worker", "-Q", queue, "-n", name,
                "--pool=prefork" if processes > 1 else "--pool=solo", f"--concurrency={processes}",
                "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=WARNING",
            ])
        deadline = time.monotonic() + timeout
        self._wait_http(web, deadline)
        self._wait_celery(names, deadline)

    def _check_alive(self) -> None:
        for child in self.children:
            if child.process.poll() is not None:
                raise StackError(f"{child.name} exited with {child.process.returncode}:\n{child.log_tail()}")

    def _wait_http(self, web: Child, deadline: float) -> None:
        while True:
            self._check_alive()
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"gunicorn did not answer /healthz:\n{web.log_tail()}")
            time.sleep(0.2)

    def _wait_celery(self, names: list[str], deadline: float) -> None:
        from glucoscope.celery import app

        waiting = set(names)
        while waiting:
            self._check_alive()
            for reply in app.control.ping(destination=sorted(waiting), timeout=1.0):
                waiting -= set(reply)
            if waiting and time.monotonic() > deadline:
                raise StackError(f"Celery workers did not answer a ping: {sorted(waiting)}")

    def stop(self, *, grace: float = 20.0) -> None:
        """SIGTERM each process group (warm shutdown), then SIGKILL whatever is left after `grace` seconds."""
        for child in self.children:
            _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait(timeout=10)
        # The group may outlive its leader (a prefork child finishing a task); kill the stragglers.
        for child in self.children:
            _signal_group(child.process, signal.SIGKILL)
        self.children.clear()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
