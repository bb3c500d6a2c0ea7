"""python manage.py bench_workers: forecasting throughput with 1, 2 and 4 Celery worker processes.

For each worker count it starts that many real `celery worker -Q forecasting` processes (solo pool,
one torch thread each, as docs/scaling.md recommends), lets every worker load the model on warm-up
tasks, then enqueues `forecasting.forecast_patients` for N patients (6 h of 5-minute readings each,
in tasks of --chunk patients, as the ingest pipeline does) and measures, from the first publish to
the last Forecast row, patients forecast per second (best of --repeat runs). Each forecast is the worker's whole step:
PostgreSQL read, batched inference, Forecast/RiskAssessment store.

Use a dedicated database and Redis database (`make bench-workers`: glucoscope_bench, Redis db 11):
the patients it creates (usernames bench-workers-*) are deleted at the end, and the forecasting
and notifications queues of that Redis database are purged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.utils import timezone

REPO_ROOT = Path(__file__).resolve().parents[3]
USER_PREFIX = "bench-workers-"
READINGS_PER_PATIENT = 72  # 6 h at 5-minute intervals: the model's context


class Command(BaseCommand):
    help = "Patients forecast per second with 1, 2 and 4 forecasting worker processes (real PostgreSQL and Redis)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--patients", type=int, default=600, help="patients forecast per run (default 600)")
        parser.add_argument("--workers", default="1,2,4", help="worker counts to run, comma-separated (default 1,2,4)")
        parser.add_argument("--chunk", type=int, default=10, help="patients per task (default 10)")
        parser.add_argument("--torch-threads", type=int, default=1, help="torch threads per worker (default 1)")
        parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per run (default 300)")
        parser.add_argument("--repeat", type=int, default=2,
                            help="timed runs per worker count, best kept: the 2-core machine is shared (default 2)")

    def handle(self, *args: Any, **options: Any) -> None:
        if connection.vendor != "postgresql" or not settings.REDIS_URL:
            raise CommandError("bench_workers needs PostgreSQL (DATABASE_URL) and Redis (REDIS_URL); see `make bench-workers`.")
        counts = [int(n) for n in str(options["workers"]).split(",") if n.strip()]
        if not counts or min(counts) < 1 or options["patients"] < 1 or options["chunk"] < 1:
            raise CommandError("--workers, --patients and --chunk must be positive")
        self.options = options
        self._delete_patients()
        try:
            ids = self._seed(options["patients"], "p")
            warm = self._seed(max(counts) * 2, "warm")
            rows = [self._run(workers, ids, warm) for workers in counts]
        finally:
            self._purge()
            self._delete_patients()
        first_workers, first_rate = rows[0][0], rows[0][3]
        self.stdout.write(f"\nForecasting throughput: {options['patients']} patients, tasks of {options['chunk']}, "
                          f"{options['torch_threads']} torch thread(s) per worker, {os.cpu_count()} CPU cores, "
                          f"best of {options['repeat']}, load average {os.getloadavg()[0]:.1f}")
        self.stdout.write(f"{'workers':>7}  {'seconds':>8}  {'patients/s':>10}  {'speed-up':>8}  {'efficiency':>10}")
        for workers, seconds, _, rate in rows:
            speed_up = rate / first_rate
            efficiency = speed_up / (workers / first_workers)
            self.stdout.write(f"{workers:>7}  {seconds:>8.2f}  {rate:>10.1f}  {speed_up:>7.2f}x  {efficiency:>10.0%}")

    # --- data ------------------------------------------------------------------------------

    def _seed(self, count: int, tag: str) -> list[int]:
        """Patients with 6 h of readings ending now (bulk inserts: no password hashing, no per-row ingest)."""
        from glucoscope.patients.models import Patient, Role, User
        from glucoscope.readings.models import GlucoseReading, ReadingSource

        users = User.objects.bulk_create([
            User(username=f"{USER_PREFIX}{tag}-{n}", role=Role.PATIENT, password="!") for n in range(count)
        ])
        patients = Patient.objects.bulk_create([Patient(user=user) for user in users])
        now = timezone.now().replace(microsecond=0)
        rng = np.random.default_rng(5)
        readings = []
        for patient in patients:
            level, drift = rng.uniform(80, 220), rng.normal(0, 1.5)
            for step in range(READINGS_PER_PATIENT):
                value = float(np.clip(level + drift * step + rng.normal(0, 4), 45, 380))
                readings.append(GlucoseReading(patient=patient, measured_at=now - timedelta(minutes=5 * (READINGS_PER_PATIENT - 1 - step)),
                                               value_mgdl=round(value), source=ReadingSource.APP, received_at=now))
        GlucoseReading.objects.bulk_create(readings, batch_size=5000)
        return [p.pk for p in patients]

    def _delete_patients(self) -> None:
        from glucoscope.patients.models import User

        User.objects.filter(username__startswith=USER_PREFIX).delete()

    def _purge(self) -> None:
        from glucoscope.celery import app

        with app.connection_for_write() as conn:
            for queue in ("forecasting", "notifications"):
                conn.default_channel.queue_purge(queue)

    # --- one run -----------------------------------------------------------------------------

    def _enqueue(self, ids: list[int], chunk: int) -> None:
        from forecasting.tasks import forecast_patients

        for start in range(0, len(ids), chunk):
            # No outbox versions: the benchmark patients have no outbox rows to release.
            forecast_patients.apply_async(args=[ids[start : start + chunk], {}])

    def _forecast_count(self, ids: list[int]) -> int:
        from forecasting.models import Forecast

        return Forecast.objects.filter(patient_id__in=ids).values("patient_id").distinct().count()

    def _wait(self, ids: list[int], what: str) -> None:
        deadline = time.monotonic() + self.options["timeout"]
        while self._forecast_count(ids) < len(ids):
            if time.monotonic() > deadline:
                raise CommandError(f"Timed out waiting for {what}: {self._forecast_count(ids)} of {len(ids)} forecast")
            time.sleep(0.05)

    def _run(self, workers: int, ids: list[int], warm: list[int]) -> tuple[int, float, int, float]:
        from forecasting.models import Forecast

        Forecast.objects.filter(patient_id__in=ids + warm).delete()
        self._purge()
        db = connection.settings_dict
        threads = str(self.options["torch_threads"])
        env = {**os.environ, "DEBUG": "false", "LOG_LEVEL": "INFO", "DATABASE_CONN_MAX_AGE": "60",
               "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
               "REDIS_URL": settings.REDIS_URL, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        try:
            for n in range(workers):
                log = Path(tempfile.mkstemp(prefix=f"bench-workers-{workers}-{n}-", suffix=".log")[1])
                procs.append((subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "glucoscope", "worker", "-Q", "forecasting", "--pool=solo",
                     "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"bench-{workers}-{n}@%h"],
                    cwd=REPO_ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                ), log))
            self._wait_ready(procs)
            # Warm-up: single-patient tasks, twice as many as workers, so each worker loads the model.
            self._enqueue(warm[: workers * 2], 1)
            self._wait(warm[: workers * 2], "the warm-up tasks")
            seconds = float("inf")
            for _ in range(max(1, self.options["repeat"])):
                Forecast.objects.filter(patient_id__in=ids).delete()
                started = time.perf_counter()
                self._enqueue(ids, self.options["chunk"])
                self._wait(ids, f"{len(ids)} forecasts with {workers} worker(s)")
                seconds = min(seconds, time.perf_counter() - started)
        finally:
            for proc, _ in procs:
                proc.terminate()
            for proc, log in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                log.unlink(missing_ok=True)
        statuses = set(Forecast.objects.filter(patient_id__in=ids).values_list("status", flat=True))
        if statuses != {"ok"}:
            raise CommandError(f"Expected only ok forecasts, got {statuses}")
        self.stderr.write(f"{workers} worker(s): {len(ids)} patients in {seconds:.2f} s")
        return workers, seconds, len(ids), len(ids) / seconds

    def _wait_ready(self, procs: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
        deadline = time.monotonic() + 180
        pending = list(procs)
        while pending:
            proc, log = pending[0]
            if proc.poll() is not None:
                raise CommandError(f"A worker exited at start:\n{log.read_text()[-2000:]}")
            if b"ready" in log.read_bytes():
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise CommandError("Workers did not start within 180 s")
            time.sleep(0.2)
