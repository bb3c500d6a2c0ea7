"""What a load run measured: the per-endpoint table, the forecast lag and the final line."""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from forecasting.models import Forecast
from glucoscope.loadtest.generator import SINGLE_POST, Results, Sample


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0–100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Lag:
    """Seconds from a phone reading's acknowledgement to the first stored forecast from an origin at or after it."""

    seconds: list[float]
    unforecast: int  # acknowledged readings no forecast covered by the end of the drain

    def p(self, q: float) -> float:
        # A reading never forecast counts as an infinite lag, so it can only push the percentiles up.
        return percentile(self.seconds + [math.inf] * self.unforecast, q)


def forecast_lag(samples: Sequence[Sample]) -> Lag:
    """Matches each sampled reading to the earliest-created forecast whose origin is at or after its timestamp.

    Both clocks are this machine's: `acked_at` is taken by the load generator when the 2xx arrives,
    `Forecast.created_at` by the Celery worker when it stores the forecast.
    """
    patient_ids = {sample.patient_id for sample in samples}
    by_patient: dict[int, list[tuple[datetime, datetime]]] = defaultdict(list)
    for patient_id, origin, created_at in (
        Forecast.objects.filter(patient_id__in=patient_ids).order_by("patient_id", "origin")
        .values_list("patient_id", "origin", "created_at").iterator(chunk_size=5_000)
    ):
        by_patient[patient_id].append((origin, created_at))
    # For each patient: origins ascending, and the earliest creation among forecasts from that origin on.
    index: dict[int, tuple[list[datetime], list[datetime]]] = {}
    for patient_id, rows in by_patient.items():
        earliest: list[datetime] = []
        for _, created_at in reversed(rows):
            earliest.append(created_at if not earliest else min(created_at, earliest[-1]))
        index[patient_id] = ([origin for origin, _ in rows], earliest[::-1])
    lags: list[float] = []
    missing = 0
    for sample in samples:
        origins, earliest = index.get(sample.patient_id, ([], []))
        position = bisect.bisect_left(origins, sample.measured_at)
        if position == len(origins):
            missing += 1
            continue
        # A forecast can land a few ms before the 2xx reaches the client; that is no lag, not a negative one.
        lags.append(max(0.0, (earliest[position] - sample.acked_at).total_seconds()))
    return Lag(lags, missing)


def endpoint_table(results: Results) -> list[str]:
    lines = ["| endpoint | requests | req/s | p50 ms | p95 ms | p99 ms | errors | 5xx |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    elapsed = max(1e-9, results.finished - results.started)
    for endpoint in sorted(set(results.statuses) | set(results.transport_errors)):
        latencies = results.latencies.get(endpoint, [])
        by_status = results.statuses.get(endpoint, {})
        count = sum(by_status.values()) + results.transport_errors.get(endpoint, 0)
        errors = sum(n for status, n in by_status.items() if status >= 400) + results.transport_errors.get(endpoint, 0)
        server = sum(n for status, n in by_status.items() if status >= 500)
        kinds = ", ".join(f"{n:,}× {status}" for status, n in sorted(by_status.items()) if status >= 400)
        if results.transport_errors.get(endpoint):
            kinds = ", ".join(filter(None, [kinds, f"{results.transport_errors[endpoint]:,}× no answer"]))
        lines.append(
            f"| {endpoint} | {count:,} | {count / elapsed:.1f} | {_ms(percentile(latencies, 50))} | "
            f"{_ms(percentile(latencies, 95))} | {_ms(percentile(latencies, 99))} | {errors:,}{f' ({kinds})' if kinds else ''} | {server:,} |"
        )
    return lines


def single_post_p95_ms(results: Results) -> float:
    return percentile(results.latencies.get(SINGLE_POST, []), 95) * 1000


def final_line(*, acknowledged: int, stored: int | None, server_errors: int, p95_single_ms: float, lag_p95: float) -> str:
    """The one line scripts read. `stored` is None when the database could not be counted."""
    stored_text = "?" if stored is None else str(stored)
    lost_text = "?" if stored is None else str(max(0, acknowledged - stored))
    return (f"loadtest: {acknowledged} acknowledged, {stored_text} stored, lost {lost_text}, 5xx {server_errors}, "
            f"p95 single POST {_number(p95_single_ms, 0)} ms, forecast lag p95 {_number(lag_p95, 2)} s")


def _ms(seconds: float) -> str:
    return _number(seconds * 1000, 1)


def _number(value: float, digits: int) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"
