"""python manage.py bench_forecast: forecasting speed as one table.

Measures, in one run:
  (a) ``forecast_csv`` end to end (parse, grid, forward passes, risk, CSV write) in origins/s on a real
      cohort slice (the first 10 subjects of ../shared/data/cgm/T1D-UOM.csv.gz), or a generated file
      when the shared data folder is absent;
  (b) batched inference as the worker runs it after its database read (``batch_from_arrays`` on the batch's
      concatenated readings + ``Forecaster.forecast_batch``: parsing, gridding, features, forward pass,
      quantile decoding, risk calibration, results as arrays) next to the bare forward pass of the same
      network on the same windows (the ceiling); also the rate when the arrays are turned into per-patient
      ``PatientForecast`` objects (``to_patient_forecasts``, the storage side's row form); and the same batch through
      ``forecasting.services.patients_forecast`` with its PostgreSQL read and store;
  (c) latency from a reading POST (gunicorn) to its stored Forecast, processed by a real Celery worker
      subprocess over Redis: p50/p95;
  (d) personalisation: the batch of (b) with every patient on an output layer of their own, next to the
      same raw forward pass, and the time to tune one patient's layer on 7 and 28 days of readings.

It needs a dedicated benchmark database (``make bench-forecast`` creates ``glucoscope_bench``): the patients
it creates are deleted again at the end, and the Redis database's queues are purged.
"""

from __future__ import annotations

import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import torch
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.utils import timezone

from forecasting.ml.data import BatchReadings, batch_from_arrays, readings_from_arrays
from forecasting.ml.datasets import sufficient_history
from forecasting.ml.inference import Forecaster
from forecasting.ml.networks import PatchGRUForecaster, PersonalOutputLayer
from forecasting.ml.personalise import fine_tune
from forecasting.ml.pipeline import forecast_csv

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CSV = REPO_ROOT.parent / "shared" / "data" / "cgm" / "T1D-UOM.csv.gz"
CONTEXT_READINGS = 78  # 6.5 h of 5-minute readings: what services.patients_forecast reads per patient
BENCH_USER_PREFIX = "bench-forecast-"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _best_rate(run: Callable[[], None], items: int, repeat: int, min_seconds: float = 0.5) -> float:
    """Items per second of the fastest of `repeat` timings; each timing loops until min_seconds passed.

    Best-of-N because the machine is shared: the least disturbed run is the fairest estimate, and both
    sides of every ratio are measured the same way.
    """
    best = 0.0
    for _ in range(repeat):
        loops, started = 0, time.perf_counter()
        while True:
            run()
            loops += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                break
        best = max(best, loops * items / elapsed)
    return best


BENCH_END = int(pd.Timestamp("2024-06-01 12:00").value // 10**9)  # the synthetic batches' last reading, seconds


def _batch(series: list[tuple[np.ndarray, np.ndarray]]) -> BatchReadings:
    """The worker's flat-array batch of synthetic series (what services.patients_forecast builds)."""
    return batch_from_arrays(np.concatenate([t for t, _ in series]), np.concatenate([v for _, v in series]),
                             [t.shape[0] for t, _ in series], [str(i) for i in range(len(series))])


def _raw_windows(forecaster: Forecaster, series: list[tuple[np.ndarray, np.ndarray]]) -> torch.Tensor:
    """The same patients' newest context windows, built the independent per-patient way: the raw pass's input."""
    subjects = {str(i): readings_from_arrays(t, v, subject_id=str(i)) for i, (t, v) in enumerate(series)}
    bank, grids = forecaster.make_bank(subjects)
    last = np.array([bank.offsets[k] + grids[k].n_slots - 1 for k in subjects], dtype=np.int64)
    assert sufficient_history(bank.observed, last).all()
    return torch.from_numpy(bank.windows(last))


def synthetic_series(n_patients: int, rng: np.random.Generator, end: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_patients`` smooth random CGM traces of CONTEXT_READINGS readings ending at ``end`` (seconds)."""
    times = end - 300 * np.arange(CONTEXT_READINGS - 1, -1, -1, dtype=np.int64)
    out = []
    for _ in range(n_patients):
        walk = np.cumsum(rng.normal(0, 2.0, CONTEXT_READINGS))
        values = np.clip(140 + 40 * np.sin(np.linspace(0, 3, CONTEXT_READINGS) + rng.uniform(0, 6)) + walk, 45, 390)
        out.append((times, np.round(values)))
    return out


class Command(BaseCommand):
    help = "Benchmark forecasting: forecast_csv origins/s, batched service inference vs the raw forward pass, POST-to-forecast latency."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--input", type=Path, default=DEFAULT_CSV, help="cohort CSV for forecast_csv (default T1D-UOM)")
        parser.add_argument("--subjects", type=int, default=10, help="subjects of --input to use (default 10)")
        parser.add_argument("--batch-sizes", default="1,64,512", help="patients per batch for (b) (default 1,64,512)")
        parser.add_argument("--posts", type=int, default=30, help="reading POSTs timed in (c) (default 30)")
        parser.add_argument("--repeat", type=int, default=3, help="timings per scenario, best kept (default 3)")
        parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
        parser.add_argument("--skip-csv", action="store_true", help="skip (a)")
        parser.add_argument("--skip-inference", action="store_true", help="skip (b)")
        parser.add_argument("--skip-e2e", action="store_true", help="skip (c) (no worker, Redis or gunicorn)")
        parser.add_argument("--skip-personalisation", action="store_true", help="skip (d)")
        parser.add_argument("--force", action="store_true", help="allow a database whose name lacks 'bench'")

    def handle(self, *args: Any, **options: Any) -> None:
        logging.getLogger("httpx").setLevel(logging.WARNING)
        try:
            sizes = [int(s) for s in options["batch_sizes"].split(",") if s.strip()]
        except ValueError as exc:
            raise CommandError(f"--batch-sizes must be comma-separated integers: {exc}") from exc
        if not sizes or min(sizes) < 1:
            raise CommandError("--batch-sizes must be positive integers")
        name = connection.settings_dict["NAME"]
        if "bench" not in str(name) and not options["force"]:
            raise CommandError(f"Refusing to write benchmark patients into database {name!r}; use a *bench* database or --force")
        torch.set_num_threads(options["threads"])
        self.repeat = max(1, options["repeat"])
        if not options["skip_e2e"] and (connection.vendor != "postgresql" or not settings.REDIS_URL):
            raise CommandError("(c) needs PostgreSQL and REDIS_URL (see `make bench-forecast`), or pass --skip-e2e")
        # One table, printed row by row as each scenario finishes (a slow run still shows what it has).
        self._header()
        if not options["skip_csv"]:
            for row in self._bench_csv(options["input"], options["subjects"]):
                self._row(row)
        if not options["skip_inference"]:
            for row in self._bench_inference(sizes):
                self._row(row)
        if not options["skip_personalisation"]:
            for row in self._bench_personalisation(max(sizes)):
                self._row(row)
        if not options["skip_e2e"]:
            e2e = self._bench_e2e(options["posts"])
            self._row(("(c) POST reading -> stored Forecast, real Celery worker on Redis", f"{options['posts']} posts",
                       f"p50 {e2e['p50'] * 1000:.0f} ms", f"p95 {e2e['p95'] * 1000:.0f} ms (max {e2e['max'] * 1000:.0f} ms)",
                       f"target p95 < 2 s: {'met' if e2e['p95'] < 2 else 'NOT met'}"))

    # --- (a) forecast_csv -----------------------------------------------------------------

    def _bench_csv(self, path: Path, subjects: int) -> list[tuple[str, str, str, str, str]]:
        with tempfile.TemporaryDirectory(prefix="bench-forecast-") as tmp:
            source = Path(tmp) / "input.csv"
            if path.exists():
                frame = pd.read_csv(path, dtype=str)
                keep = frame["subject_id"].drop_duplicates().head(subjects)
                frame[frame["subject_id"].isin(keep)].to_csv(source, index=False)
                label = f"{path.name}, {len(keep)} subjects"
            else:
                self.stderr.write(f"{path} not found: using a generated CSV (10 subjects x 14 days) instead")
                rng = np.random.default_rng(0)
                parts = []
                start = pd.Timestamp("2024-01-01").value // 10**9
                for s in range(subjects):
                    n = 14 * 288
                    t = pd.to_datetime(start + 300 * np.arange(n), unit="s").strftime("%Y-%m-%d %H:%M:%S")
                    g = np.clip(140 + np.cumsum(rng.normal(0, 2, n)) % 120, 40, 400).round()
                    parts.append(pd.DataFrame({"subject_id": f"gen{s}", "timestamp": t, "glucose_mg_dl": g}))
                pd.concat(parts).to_csv(source, index=False)
                label = f"generated CSV, {subjects} subjects x 14 days"
            best_seconds, origins = float("inf"), 0
            for _ in range(self.repeat):
                started = time.perf_counter()
                origins = forecast_csv(source, Path(tmp) / "out.csv", horizons=(30, 60))
                best_seconds = min(best_seconds, time.perf_counter() - started)
        rate = origins / best_seconds
        return [(f"(a) forecast_csv end to end ({label}, horizons 30,60)", f"{origins:,} origins",
                 f"{best_seconds:.1f} s", f"{rate:,.0f} origins/s", f"target >= 20,000: {'met' if rate >= 20_000 else 'NOT met'}")]

    # --- (b) batched inference ------------------------------------------------------------

    def _bench_inference(self, sizes: list[int]) -> list[tuple[str, str, str, str, str]]:
        forecaster = Forecaster.load()
        rng = np.random.default_rng(0)
        out: list[tuple[str, str, str, str, str]] = []
        for size in sizes:
            series = synthetic_series(size, rng, BENCH_END)
            x = _raw_windows(forecaster, series)

            def service(series: list[tuple[np.ndarray, np.ndarray]] = series) -> None:
                # What services.patients_forecast does after its database read, minus the store: one flat
                # array per field for the batch, one forecast_batch call, results kept as arrays.
                assert forecaster.forecast_batch(_batch(series)).ok.all()

            def with_rows(series: list[tuple[np.ndarray, np.ndarray]] = series) -> None:
                forecaster.forecast_batch(_batch(series)).to_patient_forecasts()

            def raw(x: torch.Tensor = x) -> None:
                with torch.inference_mode():
                    forecaster.network(x)

            rate = self._interleaved({"raw": raw, "service": service, "rows": with_rows}, size)
            ratio = rate["service"] / rate["raw"]
            out.append((f"(b) service inference, batch {size} (batch_from_arrays + forecast_batch) vs raw forward",
                        f"{size} patients",
                        f"{rate['service']:,.0f} patients/s (= windows/s); {rate['rows']:,.0f}/s with PatientForecast objects",
                        f"raw {rate['raw']:,.0f} windows/s",
                        f"ratio {ratio:.2f} (overhead {1 / ratio - 1:.0%}; with objects {rate['rows'] / rate['raw']:.2f}); "
                        f"target >= 0.50: {'met' if ratio >= 0.5 else 'NOT met'}"))
        if connection.vendor == "postgresql":
            out.append(self._bench_service_db(max(sizes), rng))
        return out

    def _interleaved(self, runs: dict[str, Callable[[], None]], size: int) -> dict[str, float]:
        """Items/s of each run, best of `repeat`, timings interleaved: a disturbance of the shared machine
        then hits every side of a ratio alike. Each run is called once first, as warm-up (lazy initialisation)."""
        for run in runs.values():
            run()
        rates = dict.fromkeys(runs, 0.0)
        for _ in range(self.repeat):
            for name, run in runs.items():
                rates[name] = max(rates[name], _best_rate(run, size, 1))
        return rates

    # --- (d) personalisation ---------------------------------------------------------------

    def _bench_personalisation(self, size: int) -> list[tuple[str, str, str, str, str]]:
        forecaster = Forecaster.load()
        network = forecaster.network
        assert isinstance(network, PatchGRUForecaster)
        rng = np.random.default_rng(1)
        series = synthetic_series(size, rng, BENCH_END)
        batch, x = _batch(series), _raw_windows(forecaster, series)
        weight = network.output_layer.weight.detach().numpy()
        bias = network.output_layer.bias.detach().numpy()
        layers = {i: PersonalOutputLayer((weight + rng.normal(0, 0.01, weight.shape)).astype(np.float32), bias.copy())
                  for i in range(size)}

        def raw() -> None:
            with torch.inference_mode():
                network(x)

        def population() -> None:
            assert forecaster.forecast_batch(batch).ok.all()

        def personal() -> None:
            assert forecaster.forecast_batch(batch, personal=layers).ok.all()

        rate = self._interleaved({"raw": raw, "population": population, "personal": personal}, size)
        rows = [(f"(d) service inference, batch {size}, every patient on their own output layer", f"{size} patients",
                 f"{rate['personal']:,.0f} patients/s; {rate['population']:,.0f}/s on the population layer",
                 f"raw {rate['raw']:,.0f} windows/s",
                 f"ratio {rate['personal'] / rate['raw']:.2f} (population {rate['population'] / rate['raw']:.2f}); own layers cost "
                 f"{rate['population'] / rate['personal'] - 1:.0%}")]
        for days in (7, 28):
            n = days * 288
            times = BENCH_END - 300 * np.arange(n - 1, -1, -1, dtype=np.int64)
            values = np.clip(140 + 50 * np.sin(np.arange(n) / 20) + np.cumsum(rng.normal(0, 1.0, n)) * 0.2, 45, 390)
            readings = readings_from_arrays(times, np.round(values), subject_id="tune")
            # One tuning per timing (min_seconds=0): the best of `repeat`, in seconds per patient.
            best = 1 / _best_rate(lambda readings=readings: fine_tune(forecaster, readings), 1, self.repeat, min_seconds=0)
            rows.append((f"(d) tune one patient's output layer on {days} days of readings (300 steps, 1 thread)",
                         f"{n:,} readings", f"{best:.2f} s", f"{3600 / best:,.0f} patients/h per worker",
                         "the daily sweep's cost per patient"))
        return rows

    def _bench_service_db(self, size: int, rng: np.random.Generator) -> tuple[str, str, str, str, str]:
        """The whole worker step for one batch: PostgreSQL read, inference, Forecast/RiskAssessment store."""
        from forecasting import services
        from forecasting.models import Forecast
        from glucoscope.readings.models import GlucoseReading, ReadingSource

        patients = self._patients(size, "svc")
        now = timezone.now().replace(microsecond=0)
        series = synthetic_series(size, rng, int(now.timestamp()))
        GlucoseReading.objects.filter(patient__in=patients).delete()
        GlucoseReading.objects.bulk_create([
            GlucoseReading(patient=p, measured_at=now - timedelta(seconds=int(times[-1] - t)), value_mgdl=float(v),
                           source=ReadingSource.APP, received_at=now)
            for p, (times, values) in zip(patients, series, strict=True) for t, v in zip(times, values, strict=True)
        ])
        ids = [p.pk for p in patients]
        services.patients_forecast(patient_ids=ids[:1], now=now)  # loads the model into this process
        best = float("inf")
        for _ in range(self.repeat):
            Forecast.objects.filter(patient_id__in=ids).delete()
            started = time.perf_counter()
            stored = services.patients_forecast(patient_ids=ids, now=now)
            best = min(best, time.perf_counter() - started)
            assert all(f.status == "ok" for f in stored), [f.reason for f in stored if f.status != "ok"][:3]
        self._delete_patients("svc")
        return (f"(b) services.patients_forecast, batch {size} (PostgreSQL read + inference + store)", f"{size} patients",
                f"{size / best:,.0f} patients/s", f"{best * 1000:.0f} ms per batch", "includes DB I/O; not the ratio's numerator")

    # --- (c) POST -> Forecast ---------------------------------------------------------------

    def _patients(self, count: int, tag: str) -> list[Any]:
        """Benchmark patients in two bulk inserts: they sign in with tokens, so no password hashing
        (hashing 512 passwords took minutes on the loaded benchmark machine)."""
        from django.contrib.auth import get_user_model

        from glucoscope.patients.models import DiabetesType, Patient, Role

        user_model = get_user_model()
        self._delete_patients(tag)
        users = [user_model(username=f"{BENCH_USER_PREFIX}{tag}-{n}", role=Role.PATIENT) for n in range(count)]
        for user in users:
            user.set_unusable_password()
        users = user_model.objects.bulk_create(users)
        return Patient.objects.bulk_create(
            [Patient(user=u, time_zone="UTC", diabetes_type=DiabetesType.TYPE_1, birth_year=1990) for u in users]
        )

    def _delete_patients(self, tag: str) -> None:
        from django.contrib.auth import get_user_model

        get_user_model().objects.filter(username__startswith=f"{BENCH_USER_PREFIX}{tag}-").delete()

    @contextmanager
    def _processes(self) -> Iterator[str]:
        """gunicorn (1 worker) and a Celery worker (solo pool, every queue) on this database and Redis."""
        port = _free_port()
        db = connection.settings_dict
        env = {**os.environ, "DEBUG": "false", "SECURE_SSL_REDIRECT": "false", "ALLOWED_HOSTS": "127.0.0.1",
               "THROTTLE_USER_RATE": "1000000/min", "THROTTLE_ANON_RATE": "1000000/min", "LOG_LEVEL": "WARNING",
               "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
               "REDIS_URL": settings.REDIS_URL}
        log = tempfile.NamedTemporaryFile(prefix="bench-forecast-worker-", suffix=".log", delete=False)
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "glucoscope.wsgi", "-w", "1", "-b", f"127.0.0.1:{port}",
             "--log-level", "warning", "--timeout", "120"], cwd=settings.BASE_DIR, env=env)
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "glucoscope", "worker", "-Q", "ingest,forecasting,notifications",
             "--pool=solo", "--concurrency=1", "--without-gossip", "--without-mingle", "-n", f"bench-forecast-{os.getpid()}@%h",
             "--loglevel=INFO"], cwd=settings.BASE_DIR, env={**env, "LOG_LEVEL": "INFO"},  # its "ready" line is INFO
            stdout=log, stderr=subprocess.STDOUT)
        base_url = f"http://127.0.0.1:{port}"
        keep_log = False
        try:
            # Generous: on a loaded 2-core machine importing Django + torch in two processes takes a while.
            deadline = time.monotonic() + 240
            while True:
                try:
                    if httpx.get(f"{base_url}/healthz").status_code == 200 and b"ready" in Path(log.name).read_bytes():
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None or worker.poll() is not None:
                    keep_log = True
                    raise CommandError(f"gunicorn or the Celery worker did not start; worker log kept: {log.name}")
                time.sleep(0.2)
            yield base_url
        finally:
            for process in (worker, server):
                process.terminate()
            for process in (worker, server):
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
            log.close()
            if not keep_log:
                Path(log.name).unlink(missing_ok=True)

    def _bench_e2e(self, posts: int) -> dict[str, float]:
        from api.authentication import GlucoScopeRefreshToken
        from forecasting.models import Forecast
        from glucoscope.celery import app
        from glucoscope.patients import services as patient_services

        app.control.purge()
        self._delete_patients("e2e")
        # Through the service (signals and all), like a real sign-up: the API is what is measured here.
        patient = patient_services.patient_upsert(username=f"{BENCH_USER_PREFIX}e2e-0", password="bench-password-not-secret",
                                                  time_zone="UTC", diabetes_type="type1", birth_year=1990)
        token = str(GlucoScopeRefreshToken.for_user(patient.user).access_token)  # carries the revocation generation
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        latencies: list[float] = []
        try:
            with self._processes() as base_url, httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
                # 6 h of history in one batch, so every timed forecast has a full context ("ok", not "insufficient").
                now = timezone.now()
                history = [{"timestamp": (now - timedelta(minutes=5 * k)).isoformat(), "value": 120 + (k * 7) % 60,
                            "unit": "mg/dL"} for k in range(72, 0, -1)]
                response = client.post("/api/v1/readings", content=orjson.dumps(history))
                if response.status_code != 200:
                    raise CommandError(f"history POST failed: {response.status_code} {response.text[:300]}")
                self._wait(lambda: Forecast.objects.filter(patient=patient).exists(), "the first forecast (worker warm-up)")
                for i in range(posts):
                    moment = timezone.now()
                    body = orjson.dumps({"timestamp": moment.isoformat(), "value": 110 + i % 40, "unit": "mg/dL"})
                    sent = time.perf_counter()
                    response = client.post("/api/v1/readings", content=body)
                    if response.status_code != 200:
                        raise CommandError(f"POST failed: {response.status_code} {response.text[:300]}")
                    stored = Forecast.objects.filter(patient=patient, origin__gte=moment)
                    self._wait(stored.exists, f"the forecast of post {i + 1}")
                    latencies.append(time.perf_counter() - sent)
                    status = stored.values_list("status", flat=True).first()
                    if status != "ok":
                        raise CommandError(f"post {i + 1}: forecast status {status!r}, expected 'ok'")
        finally:
            app.control.purge()
            self._delete_patients("e2e")
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        return {"p50": statistics.median(latencies), "p95": cuts[94], "max": max(latencies)}

    @staticmethod
    def _wait(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise CommandError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.01)

    # --- report -----------------------------------------------------------------------------

    def _header(self) -> None:
        self.stdout.write(f"Forecasting benchmark: {os.cpu_count()} CPU cores, torch {torch.__version__} with "
                          f"{torch.get_num_threads()} threads, load average at start {os.getloadavg()[0]:.1f}, "
                          f"best of {self.repeat}\n")
        self.stdout.write("| scenario | size | result | reference | against target |")
        self.stdout.write("|---|---|---|---|---|")

    def _row(self, row: tuple[str, str, str, str, str]) -> None:
        self.stdout.write("| " + " | ".join(row) + " |")
        self.stdout.flush()
