"""Thin Celery tasks for the analytics work. Names start with `forecasting.` so they run on the forecasting queue."""

from __future__ import annotations

from celery import shared_task

from forecasting import glucotypes
from glucoscope.retry import TRANSIENT_ERRORS
from glucoscope.web import services


@shared_task(
    name="forecasting.stratify_glucotypes",
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=3,
    retry_backoff=True,
    # The cohort-wide fit takes seconds per thousand patients (docs/benchmarks.md); keep headroom
    # under the broker's one-hour visibility timeout so a running job is never redelivered.
    soft_time_limit=1800,
    time_limit=1900,
)
def stratify_glucotypes(metric: str = "euclidean") -> dict[str, int]:
    """Periodic (beat) glucotype stratification of every patient with enough data; idempotent per run."""
    result = glucotypes.glucotypes_stratify(metric="dtw" if metric == "dtw" else "euclidean")
    return {"model_id": result.model.pk, "assigned": result.n_assigned, "skipped": result.n_skipped}


@shared_task(name="forecasting.refresh_triage_counts", soft_time_limit=1500, time_limit=1600)
def refresh_triage_counts(full: bool = False) -> int:
    """Every 5 min: recent days of patients with new data; nightly with full=True: the whole 28 days, everyone."""
    if full:
        return services.day_counts_refresh(patient_ids=None, days=services.TRIAGE_DAYS)
    return services.day_counts_refresh_recent()
