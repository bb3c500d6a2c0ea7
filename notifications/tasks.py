"""Thin Celery tasks for notifications: ids in, a service call, only transient errors retried.

Routed to the `notifications` queue by CELERY_TASK_ROUTES. Every task is idempotent: rows are
claimed with conditional UPDATEs and created under unique dedupe keys, so acks_late redelivery
after a worker restart neither pushes nor fires anything twice.
"""

from __future__ import annotations

import logging

from celery import shared_task

from glucoscope.retry import TRANSIENT_ERRORS
from notifications import reminders, services, tips

logger = logging.getLogger(__name__)



@shared_task(
    name="notifications.send",
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=5,
    retry_backoff=True,
    retry_jitter=True,
    soft_time_limit=45,
    time_limit=60,
)
def send_notifications(notification_ids: list[int]) -> int:
    report = services.notifications_deliver(notification_ids=notification_ids)
    return report.sent


@shared_task(
    name="notifications.evaluate_patients",
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=5,
    retry_backoff=True,
    retry_jitter=True,
    soft_time_limit=45,
    time_limit=60,
)
def evaluate_patients(patient_ids: list[int]) -> int:
    """Run the alert rules after a forecast; missing patients are simply not found."""
    return len(services.patients_evaluate_alerts(patient_ids=patient_ids))


@shared_task(name="notifications.sweep", autoretry_for=TRANSIENT_ERRORS, max_retries=3, retry_backoff=True,
             soft_time_limit=50, time_limit=58)
def sweep() -> int:
    """Beat: re-send queued rows Redis lost, escalate unacknowledged urgent lows, check stale sensors."""
    resent = services.notifications_sweep()
    escalated = services.escalations_due()
    stale = services.patients_with_stale_sensor()
    if stale:
        services.patients_evaluate_alerts(patient_ids=stale)
    return len(resent) + len(escalated)


@shared_task(name="notifications.fire_reminders", autoretry_for=TRANSIENT_ERRORS, max_retries=3, retry_backoff=True,
             soft_time_limit=50, time_limit=58)
def fire_reminders() -> int:
    return len(reminders.reminders_fire_due())


@shared_task(name="notifications.send_tips", autoretry_for=TRANSIENT_ERRORS, max_retries=3, retry_backoff=True,
             soft_time_limit=240, time_limit=300)
def send_tips() -> int:
    return len(tips.tips_send_due())
