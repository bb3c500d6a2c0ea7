"""python manage.py loadtest: phones, vendors and clinicians against gunicorn + Celery, bounded in time.

`make loadtest` creates and migrates the dedicated `glucoscope_load` database and runs this.
The command empties the load tables, seeds the people, starts gunicorn and one Celery worker
per queue on loopback, drives the load for LOADTEST_SECONDS, waits for the pipeline to drain,
then prints a table per endpoint and, always last, one line:

    loadtest: <acknowledged> acknowledged, <stored> stored, lost <n>, 5xx <n>, p95 single POST <ms> ms, forecast lag p95 <s> s

It exits non-zero when a reading was lost, a 5xx was answered, or the run failed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from glucoscope.loadtest import report
from glucoscope.loadtest.generator import LoadGenerator, Results, Workload
from glucoscope.loadtest.population import reset_load_data, seed_population
from glucoscope.loadtest.processes import Interrupted, Stack, StackConfig, sigterm_as_exception
from glucoscope.readings.models import GlucoseReading, PatientOutbox

QUEUES = ("ingest", "forecasting", "notifications")


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw.strip() else default
    except ValueError as exc:
        raise CommandError(f"{name} must be a number, got {raw!r}") from exc


def _queues(text: str) -> dict[str, int]:
    """"ingest=1,forecasting=2,notifications=1" -> {queue: worker processes}."""
    queues: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, count = part.partition("=")
        if name not in QUEUES or not count.isdigit() or int(count) < 1:
            raise CommandError(f"--celery: expected queue=processes for ingest, forecasting, notifications; got {part!r}")
        queues[name] = int(count)
    missing = set(QUEUES) - set(queues)
    if missing:
        raise CommandError(f"--celery: every queue needs a worker; missing {', '.join(sorted(missing))}")
    return queues


class Command(BaseCommand):
    help = "Load-test the whole stack on loopback for a fixed time; prints latencies, forecast lag and lost readings."

    def add_arguments(self, parser: CommandParser) -> None:
        env = _env_number
        parser.add_argument("--seconds", type=float, default=env("LOADTEST_SECONDS", 120), help="load duration (LOADTEST_SECONDS, 120)")
        parser.add_argument("--patients", type=int, default=int(env("LOADTEST_PATIENTS", 500)), help="phones (LOADTEST_PATIENTS, 500)")
        parser.add_argument("--vendors", type=int, default=int(env("LOADTEST_VENDORS", 5)), help="vendor servers (5)")
        parser.add_argument("--clinicians", type=int, default=int(env("LOADTEST_CLINICIANS", 20)), help="clinicians (20)")
        parser.add_argument("--care-teams", type=int, default=int(env("LOADTEST_CARE_TEAMS", 10)), help="care teams (10)")
        parser.add_argument("--phone-interval", type=float, default=env("LOADTEST_PHONE_INTERVAL", 5.0),
                            help="seconds between one phone's readings, ±20%% jitter (5)")
        parser.add_argument("--vendor-interval", type=float, default=env("LOADTEST_VENDOR_INTERVAL", 10.0),
                            help="seconds between one vendor's batches (10)")
        parser.add_argument("--batch-size", type=int, default=int(env("LOADTEST_BATCH_SIZE", 1000)), help="readings per vendor batch (1000)")
        parser.add_argument("--think-time", type=float, default=env("LOADTEST_THINK_TIME", 3.0), help="clinicians' mean pause, s (3)")
        parser.add_argument("--web-workers", type=int, default=int(env("LOADTEST_WEB_WORKERS", 2)), help="gunicorn processes (2)")
        parser.add_argument("--web-threads", type=int, default=int(env("LOADTEST_WEB_THREADS", 16)),
                            help="threads per gunicorn process (16: a request mostly waits on PostgreSQL, so in-flight requests, not cores, cap throughput at 4)")
        parser.add_argument("--celery", default=os.environ.get("LOADTEST_CELERY", "ingest=1,forecasting=1,notifications=1"),
                            help="worker processes per queue (ingest=1,forecasting=1,notifications=1)")
        parser.add_argument("--worker-nice", type=int, default=int(env("LOADTEST_WORKER_NICE", 10)),
                            help="niceness of the Celery workers, 0-19: they yield the cores to the web tier (10)")
        parser.add_argument("--conn-max-age", type=int, default=int(env("LOADTEST_CONN_MAX_AGE", 60)),
                            help="DATABASE_CONN_MAX_AGE for the servers (60)")
        parser.add_argument("--drain-seconds", type=float, default=env("LOADTEST_DRAIN_SECONDS", 30),
                            help="how long to wait for the after-ingest pipeline once the load stops (30)")
        parser.add_argument("--no-web-pages", action="store_true", help="clinicians use the API only, not /care/")
        parser.add_argument("--force", action="store_true", help="allow a database whose name lacks 'load'")

    def handle(self, *args: Any, **options: Any) -> None:
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.began = time.monotonic()
        if not 0 <= options["worker_nice"] <= 19:
            raise CommandError(f"--worker-nice must be 0-19, got {options['worker_nice']}")
        name = str(connection.settings_dict["NAME"])
        if connection.vendor != "postgresql":
            raise CommandError("loadtest needs PostgreSQL; set DATABASE_URL=postgres://… (see `make loadtest`)")
        if "load" not in name and not name.startswith("test_") and not options["force"]:
            raise CommandError(f"Refusing to empty the readings of database {name!r}; use a *load* database or --force")
        if not settings.REDIS_URL:
            raise CommandError("loadtest needs Redis as the broker; set REDIS_URL=redis://…/<db> (the db is purged)")
        if options["seconds"] <= 0 or options["patients"] < 1 or options["vendors"] < 1 or options["clinicians"] < 0:
            raise CommandError("--seconds, --patients and --vendors must be positive")
        workload = Workload(
            seconds=options["seconds"], phone_interval=options["phone_interval"], vendor_interval=options["vendor_interval"],
            batch_size=options["batch_size"], think_time=options["think_time"], web_pages=not options["no_web_pages"],
        )
        config = StackConfig(
            database_url=_database_url(), redis_url=settings.REDIS_URL, secret_key=settings.SECRET_KEY,
            web_workers=options["web_workers"], web_threads=options["web_threads"], conn_max_age=options["conn_max_age"],
            celery=_queues(options["celery"]), worker_nice=options["worker_nice"],
        )
        log_dir = Path(tempfile.mkdtemp(prefix="glucoscope-loadtest-"))
        stack = Stack(config, base_dir=Path(settings.BASE_DIR), log_dir=log_dir)
        results: Results | None = None
        sign_ins = Results()
        stored_before: int | None = None
        failure: str | None = None
        load_before = os.getloadavg()
        with sigterm_as_exception():
            try:
                self._say(f"purging Redis {settings.REDIS_URL}; emptying the load tables of {name}")
                _purge_redis()
                reset_load_data()
                started = time.monotonic()
                population = seed_population(patients=options["patients"], vendors=options["vendors"],
                                             clinicians=options["clinicians"], care_teams=max(1, options["care_teams"]))
                self._say(f"seeded {len(population.phones)} patients, {len(population.vendors)} vendors, "
                          f"{len(population.clinicians)} clinicians, {population.history_readings:,} history readings "
                          f"in {time.monotonic() - started:.1f} s; starting gunicorn and Celery (logs in {log_dir})")
                stack.start()
                self._say("gunicorn and the Celery workers answer; waiting for the history's forecasts (warm-up)")
                # The history's after-ingest tasks load the model in each worker: wait for them, so the
                # measured lag is the steady state, not the first model load.
                self._wait_drained(60.0, "warm-up")
                stored_before = GlucoseReading.objects.count()
                self._say(f"load for {workload.seconds:g} s against {stack.base_url} (load average {_load()})")
                generator = LoadGenerator(stack.base_url, population, workload)
                try:
                    asyncio.run(generator.run())
                finally:
                    results, sign_ins = generator.results, generator.sign_in_results
                self._say(f"load done (load average {_load()}); {PatientOutbox.objects.count()} patients waiting in the "
                          f"outbox; waiting up to {options['drain_seconds']:g} s for the pipeline")
                self._wait_drained(options["drain_seconds"], "drain")
            except (KeyboardInterrupt, Interrupted):
                failure = "interrupted"
            except Exception as exc:  # the final line is printed whatever went wrong
                failure = f"{type(exc).__name__}: {exc}"
                traceback.print_exc(file=sys.stderr)
            finally:
                stack.stop()
                try:
                    _purge_redis()
                except redis.RedisError as exc:
                    self._say(f"could not purge Redis afterwards: {exc}")
            self._report(results, sign_ins, stored_before, failure, workload, config, load_before)

    # --- steps ---------------------------------------------------------------------

    def _say(self, message: str) -> None:
        self.stderr.write(f"loadtest [{time.monotonic() - self.began:5.1f} s]: {message}")

    def _wait_drained(self, seconds: float, what: str) -> None:
        """Until every outbox row is released (its forecast stored) or time runs out."""
        deadline = time.monotonic() + seconds
        while (pending := PatientOutbox.objects.count()) and time.monotonic() < deadline:
            time.sleep(0.25)
        if pending:
            self._say(f"{what}: {pending} patients still in the outbox after {seconds:g} s")

    def _report(self, results: Results | None, sign_ins: Results, stored_before: int | None, failure: str | None, workload: Workload,
                config: StackConfig, load_before: tuple[float, float, float]) -> None:
        results = results or Results()
        stored: int | None = None
        lag = report.Lag([], 0)
        try:
            if stored_before is not None:
                stored = GlucoseReading.objects.count() - stored_before
            lag = report.forecast_lag(results.samples)
        except Exception as exc:  # the database itself may be what failed
            failure = failure or f"counting failed: {exc}"
        try:
            self._details(results, sign_ins, stored, lag, workload, config, load_before)
        except Exception as exc:  # a bug in the table must not hide the verdict
            failure = failure or f"report failed: {exc}"
            traceback.print_exc(file=sys.stderr)
        if failure:
            self.stdout.write(f"run failed: {failure}")
        self.stdout.write(report.final_line(
            acknowledged=results.accepted, stored=stored, server_errors=results.server_errors,
            p95_single_ms=report.single_post_p95_ms(results), lag_p95=lag.p(95)))
        self.stdout.flush()
        if failure or stored is None or stored != results.accepted or results.server_errors:
            sys.exit(1)

    def _details(self, results: Results, sign_ins: Results, stored: int | None, lag: report.Lag, workload: Workload,
                 config: StackConfig, load_before: tuple[float, float, float]) -> None:
        elapsed = max(1e-9, results.finished - results.started)
        write = self.stdout.write
        write(f"\nLoad test: {workload.seconds:g} s, phones every {workload.phone_interval:g} s ±20 %, "
              f"vendor batches of {workload.batch_size:,} every {workload.vendor_interval:g} s each, "
              f"clinicians thinking ~{workload.think_time:g} s")
        write(f"Stack: gunicorn {config.web_workers} × gthread {config.web_threads}, Celery "
              + ", ".join(f"{q}={n}" for q, n in config.celery.items())
              + f" at nice {config.worker_nice}, DATABASE_CONN_MAX_AGE={config.conn_max_age}; {os.cpu_count()} CPU cores; "
              f"load average before {load_before[0]:.2f}, after {_load()}\n")
        for line in report.endpoint_table(results):
            write(line)
        if sign_ins.requests:
            logins = sign_ins.statuses.get("POST /care/login/", {})
            codes = sign_ins.statuses.get("POST /care/otp/", {})
            write(f"\n/care/ sign-ins before the clock (not in the table): {sign_ins.signed_in} of {sum(logins.values())} "
                  f"signed in ({sum(codes.values())} with a TOTP code), password step p50 "
                  f"{report.percentile(sign_ins.latencies['POST /care/login/'], 50) * 1000:.0f} ms")
        requests = results.requests
        write(f"\nrequests: {requests:,} in {elapsed:.1f} s = {requests / elapsed:.1f} requests/s; "
              f"readings acknowledged {results.accepted:,} = {results.accepted / elapsed:,.0f} readings/s "
              f"(duplicates {results.duplicates}, rejected {results.rejected})")
        write(f"errors: {results.errors:,} of {requests:,} = {100 * results.errors / max(1, requests):.2f} % "
              f"(5xx {results.server_errors}, connection errors {sum(results.transport_errors.values())})")
        write(f"forecast lag (phone reading acknowledged -> first forecast from an origin at or after it, "
              f"{len(lag.seconds):,} readings, {lag.unforecast} never forecast): p50 {_s(lag.p(50))} s, "
              f"p95 {_s(lag.p(95))} s, p99 {_s(lag.p(99))} s, max {_s(lag.p(100))} s")
        write(f"readings: {results.accepted:,} acknowledged, {'?' if stored is None else f'{stored:,}'} stored in the database")
        if stored is not None and stored > results.accepted:
            write(f"  {stored - results.accepted:,} readings were stored whose answer never reached the client "
                  f"(it gave up waiting); a real uploader would re-send them and the API would count them as duplicates")


def _database_url() -> str:
    database = connection.settings_dict
    credentials = database["USER"] + (f":{database['PASSWORD']}" if database.get("PASSWORD") else "")
    return f"postgres://{credentials}@{database['HOST'] or '127.0.0.1'}:{database['PORT'] or 5432}/{database['NAME']}"


def _purge_redis() -> None:
    """Empties the broker's and cache's Redis database (the load test's own, e.g. db 12)."""
    redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2).flushdb()


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def _s(value: float) -> str:
    return "inf" if math.isinf(value) else "n/a" if math.isnan(value) else f"{value:.2f}"
