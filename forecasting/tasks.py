"""Thin Celery tasks for forecasting: ids in, service call, only transient errors retried."""

from __future__ import annotations

from celery import shared_task

from forecasting import services
from glucoscope.readings.services import outbox_complete, patients_mark_for_processing
from glucoscope.retry import TRANSIENT_ERRORS


@shared_task(
    name="forecasting.forecast_patients",
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=5,
    retry_backoff=True,
    retry_jitter=True,
    soft_time_limit=60,
    time_limit=90,
)
def forecast_patients(patient_ids: list[int], outbox_versions: dict[str, int]) -> None:
    """The last stage after an ingest: forecast, then release the patients' outbox rows."""
    services.patients_forecast(patient_ids=patient_ids)
    # Alert rules run on the notifications queue. Published before the outbox rows are released,
    # so if the broker is down this task fails and the outbox sweeper runs the patients again.
    from notifications.tasks import evaluate_patients

    evaluate_patients.apply_async(args=[list(patient_ids)])
    outbox_complete(versions={int(k): v for k, v in outbox_versions.items()})


@shared_task(name="forecasting.sweep_stale", soft_time_limit=50, time_limit=58)
def sweep_stale_forecasts() -> int:
    """Patients with recent readings but no forecast from their latest reading get one."""
    return patients_mark_for_processing(patient_ids=services.patients_with_stale_forecast())


@shared_task(
    name="forecasting.personalise_patient",
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=3,
    retry_backoff=True,
    soft_time_limit=120,
    time_limit=150,
)
def personalise_patient(patient_id: int) -> bool | None:
    """Tune the patient's own output layer if due; True/False: kept or not, None: not due or too little data."""
    try:
        row = services.patient_personalise(patient_id=patient_id, only_if_due=True)
    except services.PersonalisationRefused:
        return None
    return None if row is None else row.kept


@shared_task(name="forecasting.sweep_personalisation", soft_time_limit=600, time_limit=660)
def sweep_personalisation() -> int:
    """Daily: one personalise_patient task per patient who is due."""
    due = services.patients_due_for_personalisation()
    for patient_id in due:
        personalise_patient.delay(patient_id)
    return len(due)
