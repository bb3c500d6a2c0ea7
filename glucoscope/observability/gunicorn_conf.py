"""gunicorn settings for multi-process metrics: `gunicorn -c python:glucoscope.observability.gunicorn_conf ...`.

Command-line flags still override these. With PROMETHEUS_MULTIPROC_DIR set, each worker writes its
samples to files in that directory; when a worker exits its live gauges are dropped (its counters
and histograms stay in the sums, as Prometheus expects of counters).
"""

from __future__ import annotations

from typing import Any

wsgi_app = "glucoscope.wsgi:application"


def child_exit(server: Any, worker: Any) -> None:
    from glucoscope.observability.metrics import mark_process_dead

    mark_process_dead(worker.pid)
