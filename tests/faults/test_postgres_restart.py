"""Fault: the PostgreSQL server restarts (`pg_ctl stop -m fast`, then start) during an ingest stream.

The web process is gunicorn on a private cluster, never restarted. While the database is down
the API must answer 503 with a short JSON body (never 500, never a traceback); once it is back,
requests succeed again by themselves (Django's conn_health_checks drop the dead persistent
connections). No acknowledged reading is lost, and no batch is half stored: each batch of 20
is either all in the database or not at all, and "not at all" was never acknowledged.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from django.utils import timezone

from glucoscope.readings.models import GlucoseReading
from tests.integration.private_services import (
    REPO_ROOT,
    PrivatePostgres,
    PrivateRedis,
    WebServer,
    service_env,
    wait_until,
)

pytestmark = pytest.mark.integration

BATCH = 20
ERR_UNAVAILABLE_FIELDS = {"detail"}
SETUP_SCRIPT = """
import json, django
django.setup()
from rest_framework_simplejwt.tokens import RefreshToken
from tests.factories import PatientFactory
patients = PatientFactory.create_batch(3)
print(json.dumps([[p.pk, str(RefreshToken.for_user(p.user).access_token)] for p in patients]))
"""


@dataclass
class Cluster:
    postgres: PrivatePostgres
    web: WebServer
    phones: list[tuple[int, str]]


@pytest.fixture(scope="module")
def cluster(fault_postgres: PrivatePostgres, fault_redis: PrivateRedis,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    database_url = fault_postgres.url("glucoscope")
    # Persistent connections (60 s) as in production: they must survive the restart by health checks.
    env = service_env(database_url=database_url, redis_url=fault_redis.url())
    # The patients are created by a child process on the private database while gunicorn starts.
    setup = subprocess.Popen(
        [sys.executable, "-c", SETUP_SCRIPT], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**env, "DJANGO_SETTINGS_MODULE": "glucoscope.settings", "PYTHONPATH": str(REPO_ROOT),
             "LOG_LEVEL": "WARNING"},
    )
    web = WebServer(env=env, log_path=Path(tmp_path_factory.mktemp("web-pg")) / "gunicorn.log")
    try:
        out, err = setup.communicate(timeout=180)
        assert setup.returncode == 0, err.decode()[-3000:]
        phones = [tuple(item) for item in json.loads(out.decode().strip().splitlines()[-1])]
        yield Cluster(fault_postgres, web, phones)  # type: ignore[arg-type]
    finally:
        web.stop()
        if not fault_postgres_running(fault_postgres):
            fault_postgres.start()


def fault_postgres_running(postgres: PrivatePostgres) -> bool:
    try:
        psycopg.connect(postgres.url("glucoscope").replace("postgres://", "postgresql://"), connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


@dataclass
class Phone:
    """A vendor-style uploader: batches of 20 readings, each batch with its own minutes of sensor time."""

    patient_id: int
    token: str
    first: datetime
    results: list[tuple[list[datetime], int, str]] = field(default_factory=list)

    def run(self, base_url: str, stop: threading.Event) -> None:
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60) as client:
            batch = 0
            while not stop.is_set():
                moments = [self.first + timedelta(minutes=BATCH * batch + i) for i in range(BATCH)]
                batch += 1
                body = [{"timestamp": m.isoformat(), "value": 90 + i, "unit": "mg/dL"} for i, m in enumerate(moments)]
                try:
                    response = client.post("/api/v1/readings", json=body)
                    self.results.append((moments, response.status_code, response.text))
                except httpx.TransportError as exc:
                    self.results.append((moments, 0, repr(exc)))
                time.sleep(0.02)


def test_the_api_answers_503_while_postgres_restarts_recovers_by_itself_and_keeps_every_batch_whole(
    cluster: Cluster,
) -> None:
    start = (timezone.now() - timedelta(days=5)).replace(second=0, microsecond=0)
    phones = [Phone(patient_id, token, start) for patient_id, token in cluster.phones]
    stop = threading.Event()
    threads = [threading.Thread(target=phone.run, args=(cluster.web.url, stop)) for phone in phones]

    def posts() -> int:
        return sum(len(phone.results) for phone in phones)

    outage_probes: dict[str, tuple[int, str]] = {}
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: posts() >= 15, timeout=60, what="the stream to start")
        cluster.postgres.stop("fast")
        during = posts()
        wait_until(lambda: posts() >= during + 15, timeout=60, what="posts while PostgreSQL is down")
        for probe in ("/healthz", "/readyz"):
            response = httpx.get(f"{cluster.web.url}{probe}", timeout=30)
            outage_probes[probe] = (response.status_code, response.text)
        cluster.postgres.start()

        def recovered() -> bool:
            # Every phone's last three batches after the restart were stored.
            return all(
                len(phone.results) >= 3 and all(status == 200 for _, status, _ in phone.results[-3:]) for phone in phones
            )

        wait_until(recovered, timeout=60, what="the API to recover without a restart", interval=0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    assert cluster.web.process.poll() is None, "the web process must keep running"
    refused = [(status, text) for phone in phones for _, status, text in phone.results if status != 200]
    assert refused, "the outage produced no refused request: the test did not exercise it"
    for status, text in refused:
        assert status == 503, f"while the database is down the API answers 503, got {status}: {text[:500]}"
        body = json.loads(text)
        assert set(body) == ERR_UNAVAILABLE_FIELDS and "Traceback" not in text and "psycopg" not in text, text
    assert outage_probes["/healthz"][0] == 200, "liveness must not depend on the database"
    if outage_probes["/readyz"][0] != 404:
        assert outage_probes["/readyz"][0] == 503, outage_probes["/readyz"]

    with psycopg.connect(cluster.postgres.url("glucoscope").replace("postgres://", "postgresql://")) as conn:
        for phone in phones:
            stored = {
                row[0] for row in conn.execute(
                    f'SELECT measured_at FROM "{GlucoseReading._meta.db_table}" WHERE patient_id = %s', [phone.patient_id]
                )
            }
            for moments, status, text in phone.results:
                kept = sum(1 for m in moments if m in stored)
                assert kept in (0, BATCH), f"a partial batch remains: {kept} of {BATCH} readings stored"
                if status == 200:
                    assert kept == BATCH, "an acknowledged batch is missing"
                    assert json.loads(text)["accepted"] == BATCH
                else:
                    assert kept in (0, BATCH)  # stored but unacknowledged only if the commit's reply was lost
            acknowledged = sum(BATCH for _, status, _ in phone.results if status == 200)
            assert len(stored) >= acknowledged
