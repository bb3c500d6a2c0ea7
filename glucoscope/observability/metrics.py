"""Prometheus metrics, safe with many processes on one host (gunicorn workers and Celery workers).

With PROMETHEUS_MULTIPROC_DIR set (before the process starts), prometheus-client keeps every
process's samples in memory-mapped files in that directory and `/metrics` on any web worker
adds them up: counters and histograms are summed over processes. The directory must be shared
by every gunicorn and Celery process of the host and emptied at deploy (docs/scaling.md).
Without it (development, tests) each process exposes only its own figures.

Queue depth is not recorded by anyone: it is read from Redis at scrape time.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from django.conf import settings
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector

logger = logging.getLogger(__name__)

# Buckets in seconds: API requests are mostly 5-300 ms; a forecast batch of 100 patients takes ~1 s.
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)
_FORECAST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HTTP_REQUEST_SECONDS = Histogram(
    "glucoscope_http_request_duration_seconds", "HTTP request latency by route name, method and status.",
    ["route", "method", "status"], buckets=_REQUEST_BUCKETS,
)
READINGS_INGESTED = Counter(
    "glucoscope_readings_ingested", "Readings received in ingest batches, by source and outcome.",
    ["source", "outcome"],
)
FORECAST_BATCH_SECONDS = Histogram(
    "glucoscope_forecast_batch_duration_seconds", "Wall time of one forecasting batch (load, forward pass, store).",
    buckets=_FORECAST_BUCKETS,
)
FORECAST_PATIENT_SECONDS = Histogram(
    "glucoscope_forecast_patient_duration_seconds", "Forecasting wall time per patient (batch time / patients in it).",
    buckets=_FORECAST_BUCKETS,
)
FORECASTS = Counter("glucoscope_forecasts", "Forecasts produced (stored, or found already stored), by status.", ["status"])
NOTIFICATION_OUTCOMES = Counter(
    "glucoscope_notification_deliveries", "Notification delivery outcomes, by outcome.", ["outcome"],
)
NOTIFICATION_BATCH_SECONDS = Histogram(
    "glucoscope_notification_delivery_duration_seconds", "Wall time of one notification delivery batch.",
    buckets=_FORECAST_BUCKETS,
)

F = TypeVar("F", bound=Callable[..., Any])


class _BatchOutcome(Protocol):
    accepted: int
    duplicates: int
    rejected: list[dict[str, Any]]


def record_request(*, route: str, method: str, status: int, seconds: float) -> None:
    HTTP_REQUEST_SECONDS.labels(route, method, str(status)).observe(seconds)


def record_ingest(*, source: str, outcome: _BatchOutcome) -> None:
    """One call per ingest batch, from the code every ingest path shares."""
    for name, count in (("accepted", outcome.accepted), ("duplicate", outcome.duplicates), ("rejected", len(outcome.rejected))):
        if count:
            READINGS_INGESTED.labels(source, name).inc(count)


def observe_forecast_batch(func: F) -> F:
    """Decorate the batched forecasting service: time it, count results by status, log the batch."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        forecasts = func(*args, **kwargs)
        elapsed = time.perf_counter() - started
        FORECAST_BATCH_SECONDS.observe(elapsed)
        per_patient = elapsed / len(forecasts) if forecasts else 0.0
        statuses: dict[str, int] = {}
        for forecast in forecasts:
            FORECAST_PATIENT_SECONDS.observe(per_patient)
            statuses[forecast.status] = statuses.get(forecast.status, 0) + 1
        for status, count in statuses.items():
            FORECASTS.labels(status).inc(count)
        logger.info(
            "forecast batch: %d patients in %.3f s", len(forecasts), elapsed,
            extra={"patient_ids": sorted({f.patient_id for f in forecasts}), "seconds": round(elapsed, 4), "statuses": statuses},
        )
        return forecasts

    return wrapper  # type: ignore[return-value]


_DELIVERY_FIELDS = ("sent", "failed", "requeued", "not_configured", "tokens_deactivated")


def observe_delivery(func: F) -> F:
    """Decorate the notification delivery service: count its DeliveryReport by outcome and time it."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        report = func(*args, **kwargs)
        NOTIFICATION_BATCH_SECONDS.observe(time.perf_counter() - started)
        for name in _DELIVERY_FIELDS:
            count = getattr(report, name, 0)
            if count:
                NOTIFICATION_OUTCOMES.labels(name).inc(count)
        return report

    return wrapper  # type: ignore[return-value]


# --- Queue depth, read at scrape time ----------------------------------------------------------

# kombu's Redis transport keeps one list per queue and priority: the queue name for the default
# priority and `<queue>\x06\x16<n>` for the others; messages taken by a worker but not yet
# acknowledged (acks_late) sit in the `unacked` hash.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


def celery_queue_names() -> list[str]:
    routes: dict[str, dict[str, str]] = settings.CELERY_TASK_ROUTES
    return sorted({settings.CELERY_TASK_DEFAULT_QUEUE, *(route["queue"] for route in routes.values())})


class QueueDepthCollector(Collector):
    def __init__(self, redis_url: str, queues: Iterable[str]) -> None:
        self.redis_url = redis_url
        self.queues = list(queues)

    def collect(self) -> Iterable[Metric]:
        import redis

        depth = GaugeMetricFamily("glucoscope_celery_queue_length", "Messages waiting in each Celery queue.", labels=["queue"])
        unacked = GaugeMetricFamily("glucoscope_celery_unacked", "Messages taken by workers and not yet acknowledged.")
        up = GaugeMetricFamily("glucoscope_celery_broker_up", "1 when the broker answered the queue-depth scrape.")
        try:
            client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=1, socket_timeout=1)
            pipe = client.pipeline(transaction=False)
            for queue in self.queues:
                pipe.llen(queue)
                for step in _PRIORITY_STEPS:
                    pipe.llen(f"{queue}{_PRIORITY_SEPARATOR}{step}")
            pipe.hlen("unacked")
            lengths = pipe.execute()
        except redis.RedisError:
            logger.warning("Queue depth scrape: the broker did not answer")
            up.add_metric([], 0)
            return [up]
        per_queue = 1 + len(_PRIORITY_STEPS)
        for index, queue in enumerate(self.queues):
            depth.add_metric([queue], sum(lengths[index * per_queue : (index + 1) * per_queue]))
        unacked.add_metric([], lengths[-1])
        up.add_metric([], 1)
        return [depth, unacked, up]


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render() -> bytes:
    """The text exposition for one scrape: this host's processes plus the queue depths."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    if settings.REDIS_URL:
        queues = CollectorRegistry()
        queues.register(QueueDepthCollector(settings.REDIS_URL, celery_queue_names()))
        body += generate_latest(queues)
    return body


def mark_process_dead(pid: int) -> None:
    """gunicorn `child_exit` hook: drop a dead worker's live gauges (its counters stay summed)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def metrics_client_allowed(*, remote_addr: str | None, authorization: str | None) -> bool:
    """Scrapers are admitted by source address (METRICS_ALLOWED_IPS) or by METRICS_BEARER_TOKEN."""
    token: str = settings.METRICS_BEARER_TOKEN
    if token and authorization and authorization.startswith("Bearer "):
        if hmac.compare_digest(authorization[len("Bearer "):].encode(), token.encode()):
            return True
    if not remote_addr:
        return False
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    return any(address in network for network in _allowed_networks(tuple(settings.METRICS_ALLOWED_IPS)))


@functools.lru_cache(maxsize=4)
def _allowed_networks(entries: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(entry, strict=False) for entry in entries]
