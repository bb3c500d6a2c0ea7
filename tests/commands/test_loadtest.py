"""`manage.py loadtest` end to end: a short run with a small population against real PostgreSQL and Redis.

The command starts its own gunicorn and Celery workers against the test database, so this
test proves the orchestration, the accounting and the verdict line, not the figures (those are
measured by `make loadtest`, docs/benchmarks.md).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from glucoscope.loadtest.report import final_line, percentile
from tests.integration.conftest import real_services  # noqa: F401  (the fixture: skip or fail without services)

REPO_ROOT = Path(__file__).resolve().parents[2]
FINAL = re.compile(
    r"loadtest: (\d+) acknowledged, (\d+) stored, lost (\d+), 5xx (\d+), "
    r"p95 single POST (\d+) ms, forecast lag p95 (\d+\.\d\d) s"
)


@pytest.mark.integration
@pytest.mark.usefixtures("real_services", "transactional_db")
def test_short_run_stores_every_acknowledged_reading_and_ends_with_the_verdict() -> None:
    database = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": settings.SECRET_KEY,
        "DEBUG": "false",
        "SECURE_SSL_REDIRECT": "false",
        "LOADTEST_SECONDS": "10",
        "LOADTEST_PATIENTS": "20",
        "LOADTEST_VENDORS": "2",
        "LOADTEST_CLINICIANS": "2",
        "LOADTEST_CARE_TEAMS": "1",
        "LOADTEST_VENDOR_INTERVAL": "4",
        "LOADTEST_THINK_TIME": "1",
        "LOADTEST_DRAIN_SECONDS": "20",
        "LOADTEST_WEB_WORKERS": "1",  # one Django + torch import fewer to wait for
    }
    run = subprocess.run([sys.executable, "manage.py", "loadtest"], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=180)
    output = run.stdout.strip().splitlines()
    assert output, run.stderr[-3000:]
    verdict = FINAL.fullmatch(output[-1])
    assert verdict, f"last line {output[-1]!r}\n{run.stderr[-3000:]}"
    acknowledged, stored, lost, server_errors = (int(verdict.group(n)) for n in range(1, 5))
    # 20 phones every 5 s for 10 s, plus vendor batches of 1,000.
    assert acknowledged > 1_000
    assert (stored, lost, server_errors) == (acknowledged, 0, 0)
    assert run.returncode == 0, run.stderr[-3000:]
    table = "\n".join(output)
    for endpoint in ("POST /api/v1/readings (1 reading)", "POST /api/v1/readings (1,000 readings)",
                     "GET /api/v1/patients", "GET /api/v1/patients/{id}/forecast", "GET /care/ "):
        assert f"| {endpoint.strip()} |" in table, endpoint
    # The Celery workers ran below the web tier's priority.
    assert "notifications=1 at nice 10," in table
    # Both clinicians passed the password and the TOTP step of /care/ and reached the dashboard.
    assert "2 of 2 signed in (2 with a TOTP code)" in table
    # The command stopped the gunicorn it started: nothing answers on its port any more.
    server = re.search(r"against (http://127\.0\.0\.1:\d+)", run.stderr)
    assert server, run.stderr[-3000:]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.group(1)}/healthz", timeout=2)


def test_a_worker_niceness_outside_0_to_19_is_refused_before_anything_starts() -> None:
    with pytest.raises(CommandError, match="--worker-nice must be 0-19, got 25"):
        call_command("loadtest", "--worker-nice", "25")


def test_the_verdict_line_reads_the_same_when_the_database_could_not_be_counted() -> None:
    assert final_line(acknowledged=12, stored=None, server_errors=0, p95_single_ms=math.nan, lag_p95=math.inf) == (
        "loadtest: 12 acknowledged, ? stored, lost ?, 5xx 0, p95 single POST n/a ms, forecast lag p95 inf s"
    )
    assert final_line(acknowledged=5, stored=3, server_errors=2, p95_single_ms=41.6, lag_p95=1.234) == (
        "loadtest: 5 acknowledged, 3 stored, lost 2, 5xx 2, p95 single POST 42 ms, forecast lag p95 1.23 s"
    )


def test_percentiles_are_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 100)) == (50.0, 95.0, 100.0)
    assert math.isnan(percentile([], 95))
