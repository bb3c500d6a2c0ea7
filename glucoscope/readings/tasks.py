"""Thin Celery tasks: they take ids and call a service. Only transient errors retry."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

from glucoscope.patients.models import Patient
from glucoscope.readings import services

logger = logging.getLogger(__name__)

TRANSIENT_ERRORS = (OperationalError, InterfaceError)


@shared_task(
    name="readings.process_patient",
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=5,
    retry_backoff=True,
    retry_jitter=True,
    soft_time_limit=30,
    time_limit=60,
)
def process_patient(patient_id: int) -> None:
    if not Patient.objects.filter(pk=patient_id).exists():
        logger.info("process_patient: patient %s no longer exists; nothing to do", patient_id)
        return
    services.patient_process(patient_id=patient_id)


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
