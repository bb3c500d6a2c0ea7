"""Thin Celery tasks: they take ids and call a service. Only transient errors retry."""

from __future__ import annotations

from celery import shared_task

from glucoscope.readings import services
from glucoscope.retry import TRANSIENT_ERRORS


@shared_task(
    name="readings.process_patients",
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=5,
    retry_backoff=True,
    retry_jitter=True,
    soft_time_limit=30,
    time_limit=60,
)
def process_patients(patient_ids: list[int]) -> None:
    # Deleted patients have no outbox row any more, so the service skips them.
    services.patients_process(patient_ids=patient_ids)


@shared_task(
    name="readings.sweep_outbox",
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=3,
    retry_backoff=True,
    soft_time_limit=50,
    time_limit=58,
)
def sweep_outbox() -> int:
    return services.outbox_sweep()
