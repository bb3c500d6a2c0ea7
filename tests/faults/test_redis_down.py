"""Fault: Redis stops in the middle of an ingest stream and comes back empty (no persistence).

Phones keep posting single readings to gunicorn while Redis is stopped and restarted. Ingest must
not depend on the broker: every reading the API acknowledged is in PostgreSQL, and the outbox
sweeper sends the work Redis lost (tasks queued before the crash, publishes that failed during
it), so every patient ends with a summary counting every stored reading and a forecast from
their newest reading.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from django.utils import timezone
from rest_framework_simplejwt.tokens import RefreshToken

from forecasting.models import Forecast
from glucoscope.readings import services
from glucoscope.readings.models import GlucoseReading, PatientOutbox, PatientSummary
from tests.factories import PatientFactory
from tests.faults.conftest import Workers, django_test_db_url
from tests.integration.private_services import PrivateRedis, WebServer, service_env, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def web(fault_redis: PrivateRedis, fault_workers: Workers, django_db_setup: None,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    env = service_env(database_url=django_test_db_url(), redis_url=fault_redis.url(), DATABASE_CONN_MAX_AGE="0")
    # The worker and gunicorn start side by side (each spends its start-up importing Django and numpy).
    worker = fault_workers.start(wait=False)
    server = WebServer(env=env, log_path=Path(tmp_path_factory.mktemp("web")) / "gunicorn.log")
    try:
        worker.wait_ready()
        yield server
    finally:
        server.stop()


@dataclass
class Phone:
    """One patient's app posting one reading per request, a minute of sensor time apart."""

    patient_id: int
    token: str
    first: datetime
    results: list[tuple[datetime, int, str]] = field(default_factory=list)

    def run(self, base_url: str, stop: threading.Event) -> None:
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60) as client:
            n = 0
            while not stop.is_set():
                moment = self.first + timedelta(minutes=n)
                n += 1
                body = [{"timestamp": moment.isoformat(), "value": 100 + n % 60, "unit": "mg/dL"}]
                try:
                    response = client.post("/api/v1/readings", json=body)
                    self.results.append((moment, response.status_code, response.text[:300]))
                except httpx.TransportError as exc:
                    self.results.append((moment, 0, repr(exc)))
                time.sleep(0.03)

    def acknowledged(self) -> list[datetime]:
        return [moment for moment, status, _ in self.results if 200 <= status < 300]


def test_readings_acknowledged_while_redis_is_down_are_stored_and_the_sweeper_processes_the_backlog(
    web: WebServer, fault_redis: PrivateRedis, fault_workers: Workers, settings  # type: ignore[no-untyped-def]
) -> None:
    # The sweeper re-sends rows whose task Redis lost after this long (120 s in production).
    settings.OUTBOX_STALE_AFTER = timedelta(seconds=2)
    start = (timezone.now() - timedelta(hours=1)).replace(second=0, microsecond=0)
    phones = [
        Phone(patient.pk, str(RefreshToken.for_user(patient.user).access_token), start)
        for patient in PatientFactory.create_batch(4)
    ]
    stop = threading.Event()
    threads = [threading.Thread(target=phone.run, args=(web.url, stop)) for phone in phones]

    def posts() -> int:
        return sum(len(phone.results) for phone in phones)

    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: posts() >= 20, timeout=30, what="the stream to start")
        fault_redis.stop()
        during_outage = posts()
        wait_until(lambda: posts() >= during_outage + 40, timeout=30, what="posts while Redis is down")
        fault_redis.start()
        after_restart = posts()
        wait_until(lambda: posts() >= after_restart + 20, timeout=30, what="posts after Redis returned")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    for phone in phones:
        failures = [(moment, status, text) for moment, status, text in phone.results if status != 200]
        assert not failures, f"ingest must not depend on Redis: {failures[:3]}"
        stored = set(GlucoseReading.objects.filter(patient_id=phone.patient_id).values_list("measured_at", flat=True))
        assert set(phone.acknowledged()) <= stored, "an acknowledged reading is missing from PostgreSQL"
        assert len(stored) == len(phone.acknowledged())

    def backlog_processed() -> bool:
        try:
            services.outbox_sweep()
        except Exception:  # the first publish after the restart may meet a stale pooled connection
            return False
        for phone in phones:
            newest = max(phone.acknowledged())
            summary = PatientSummary.objects.filter(patient_id=phone.patient_id).first()
            if summary is None or summary.readings_last_24h != len(phone.acknowledged()):
                return False
            if not Forecast.objects.filter(patient_id=phone.patient_id, origin=newest).exists():
                return False
        return not PatientOutbox.objects.filter(patient_id__in=[p.patient_id for p in phones]).exists()

    wait_until(backlog_processed, timeout=90, what="the sweeper and worker to process every patient", interval=1.0)
    for phone in phones:
        assert Forecast.objects.filter(patient_id=phone.patient_id, origin=max(phone.acknowledged())).count() == 1
