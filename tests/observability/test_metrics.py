"""Prometheus metrics: what is counted, who may scrape, queue depth from Redis, multi-process aggregation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.conf import settings as django_settings
from django.utils import timezone
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from glucoscope.observability import metrics
from tests.conftest import bearer
from tests.factories import PatientFactory

pytestmark = pytest.mark.django_db
REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "metrics-scraper-token-0123456789abcdef"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(**extra: str) -> tuple[int, str]:
    response = APIClient().get("/metrics", **extra)
    return response.status_code, response.content.decode()


def test_loopback_may_scrape_and_other_addresses_get_404(settings) -> None:  # type: ignore[no-untyped-def]
    settings.METRICS_BEARER_TOKEN = ""
    status, body = scrape(REMOTE_ADDR="127.0.0.1")
    assert status == 200 and "glucoscope_http_request_duration_seconds" in body
    assert scrape(REMOTE_ADDR="203.0.113.7")[0] == 404
    # A spoofed forwarding header does not make a remote client local.
    assert scrape(REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR="127.0.0.1")[0] == 404


def test_a_remote_scraper_needs_the_bearer_token(settings) -> None:  # type: ignore[no-untyped-def]
    settings.METRICS_BEARER_TOKEN = TOKEN
    remote = {"REMOTE_ADDR": "203.0.113.7"}
    assert scrape(**remote, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")[0] == 200
    assert scrape(**remote, HTTP_AUTHORIZATION=f"Bearer {TOKEN}x")[0] == 404
    assert scrape(**remote, HTTP_AUTHORIZATION=f"Token {TOKEN}")[0] == 404
    settings.METRICS_BEARER_TOKEN = ""
    assert scrape(**remote, HTTP_AUTHORIZATION="Bearer ")[0] == 404  # no token configured: never by token


def test_an_allowlisted_network_may_scrape(settings) -> None:  # type: ignore[no-untyped-def]
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    assert scrape(REMOTE_ADDR="10.1.2.3")[0] == 200
    assert scrape(REMOTE_ADDR="127.0.0.1")[0] == 404


def test_request_latency_is_recorded_per_route_name_not_path() -> None:
    patient = PatientFactory()
    labels = {"route": "v1:patient-summary", "method": "GET", "status": "200"}
    before = sample("glucoscope_http_request_duration_seconds_count", **labels)
    assert bearer(patient.user).get(f"/api/v1/patients/{patient.pk}/summary").status_code == 200
    assert sample("glucoscope_http_request_duration_seconds_count", **labels) == before + 1
    _, body = scrape()
    assert f"/patients/{patient.pk}/" not in body


def test_ingest_is_counted_by_source_and_outcome_and_forecasts_by_status(django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    patient = PatientFactory()
    now = timezone.now()
    body = [{"timestamp": (now - timedelta(minutes=m)).isoformat(), "value": 100 + m, "unit": "mg/dL"} for m in range(60, -1, -5)]
    body.append(body[0])  # an exact duplicate within the batch
    body.append({"timestamp": now.isoformat(), "value": "high-ish", "unit": "mg/dL"})  # rejected
    counts = {o: sample("glucoscope_readings_ingested_total", source="app", outcome=o) for o in ("accepted", "duplicate", "rejected")}
    forecasts_ok = sample("glucoscope_forecasts_total", status="ok")
    batches = sample("glucoscope_forecast_batch_duration_seconds_count")
    # Tasks run in-process in unit tests, right after the ingest commits: the forecast is made too.
    with django_capture_on_commit_callbacks(execute=True):
        response = bearer(patient.user).post("/api/v1/readings", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == 13
    assert sample("glucoscope_readings_ingested_total", source="app", outcome="accepted") == counts["accepted"] + 13
    assert sample("glucoscope_readings_ingested_total", source="app", outcome="duplicate") == counts["duplicate"] + 1
    assert sample("glucoscope_readings_ingested_total", source="app", outcome="rejected") == counts["rejected"] + 1
    assert sample("glucoscope_forecasts_total", status="ok") == forecasts_ok + 1
    assert sample("glucoscope_forecast_batch_duration_seconds_count") == batches + 1


def test_notification_outcomes_are_counted(settings) -> None:  # type: ignore[no-untyped-def]
    from notifications.models import Notification
    from notifications.services import notifications_deliver

    settings.FIREBASE_CREDENTIALS_FILE = ""
    patient = PatientFactory()
    ids = [
        Notification.objects.create(patient=patient, recipient=patient.user, kind="low", title="t", send_after=timezone.now(),
                                    dedupe_key=f"metrics-{n}").pk
        for n in range(2)
    ]
    before = sample("glucoscope_notification_deliveries_total", outcome="not_configured")
    notifications_deliver(notification_ids=ids)
    assert sample("glucoscope_notification_deliveries_total", outcome="not_configured") == before + 2


def test_queue_depth_is_read_from_redis_at_scrape_time() -> None:
    if not django_settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set")
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    queue = "observability-test-queue"
    client.delete(queue, f"{queue}\x06\x163")
    try:
        client.rpush(queue, "a", "b")
        client.rpush(f"{queue}\x06\x163", "c")  # a message at another priority is still waiting in that queue
        families = {m.name: m for m in metrics.QueueDepthCollector(django_settings.REDIS_URL, [queue]).collect()}
        assert [(s.labels, s.value) for s in families["glucoscope_celery_queue_length"].samples] == [({"queue": queue}, 3)]
        assert families["glucoscope_celery_broker_up"].samples[0].value == 1
    finally:
        client.delete(queue, f"{queue}\x06\x163")
    _, body = scrape()
    for name in metrics.celery_queue_names():
        assert f'glucoscope_celery_queue_length{{queue="{name}"}}' in body


def test_an_unreachable_broker_is_reported_not_raised() -> None:
    families = list(metrics.QueueDepthCollector("redis://127.0.0.1:1/0", ["ingest"]).collect())
    assert [(m.name, m.samples[0].value) for m in families] == [("glucoscope_celery_broker_up", 0)]


def test_counters_from_many_processes_are_summed(settings, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """PROMETHEUS_MULTIPROC_DIR: two worker processes count, the scrape in a third adds them up."""
    settings.REDIS_URL = ""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    code = (
        "import sys; from glucoscope.observability import metrics;"
        " metrics.READINGS_INGESTED.labels('vendor', 'accepted').inc(int(sys.argv[1]));"
        " metrics.FORECAST_BATCH_SECONDS.observe(0.2)"
    )
    for count in ("3", "4"):
        subprocess.run([sys.executable, "-c", code, count], cwd=REPO_ROOT, env=env, check=True, timeout=60)
    assert len(list(tmp_path.glob("*.db"))) >= 2  # one file set per process
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    body = metrics.render().decode()
    assert 'glucoscope_readings_ingested_total{outcome="accepted",source="vendor"} 7.0' in body
    assert "glucoscope_forecast_batch_duration_seconds_count 2.0" in body
