"""Reading the audit log."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from glucoscope.audit.models import AuditEntry


def access_log_for_patient(*, patient_id: int, start: datetime, end: datetime) -> QuerySet[AuditEntry]:
    """Entries about one patient in [start, end); the caller orders and pages them."""
    return AuditEntry.objects.filter(patient_id=patient_id, at__gte=start, at__lt=end)
