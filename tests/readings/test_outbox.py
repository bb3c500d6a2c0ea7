"""The outbox: one task in flight per patient, no ingest missed, stale work re-sent."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from glucoscope.readings import services
from glucoscope.readings.models import PatientOutbox, PatientSummary
from tests.factories import PatientFactory

pytestmark = pytest.mark.django_db


def test_marking_twice_bumps_the_version_and_claims_the_patient_once() -> None:
    patient = PatientFactory()
    services.outbox_mark(patient_ids=[patient.pk])
    services.outbox_mark(patient_ids=[patient.pk])
    row = PatientOutbox.objects.get(patient=patient)
    assert row.version == 2
    assert row.enqueued_at is not None and row.attempts == 1, "one task in flight per patient"
    assert services._claim_for_enqueue([patient.pk], stale_before=None) == []


def test_a_task_that_saw_an_old_version_leaves_the_row_and_runs_again() -> None:
    patient = PatientFactory()
    services.outbox_mark(patient_ids=[patient.pk])
    versions = services.outbox_versions(patient_ids=[patient.pk])
    services.outbox_mark(patient_ids=[patient.pk])  # new data arrives while the task runs
    services.outbox_complete(versions=versions)
    # Tasks are eager in unit tests: the re-run processed the patient and cleared the row.
    assert not PatientOutbox.objects.filter(patient=patient).exists()
    assert PatientSummary.objects.filter(patient=patient).exists()


def test_the_sweeper_resends_rows_never_enqueued_or_enqueued_too_long_ago(settings) -> None:  # type: ignore[no-untyped-def]
    never, stale, fresh = PatientFactory(), PatientFactory(), PatientFactory()
    now = timezone.now()
    PatientOutbox.objects.create(patient=never, dirty_at=now, enqueued_at=None)
    PatientOutbox.objects.create(patient=stale, dirty_at=now, enqueued_at=now - settings.OUTBOX_STALE_AFTER - timedelta(seconds=1))
    PatientOutbox.objects.create(patient=fresh, dirty_at=now, enqueued_at=now)
    assert services.outbox_sweep() == 2
    assert list(PatientOutbox.objects.values_list("patient_id", flat=True)) == [fresh.pk]


def test_a_missing_patient_is_logged_and_the_task_returns() -> None:
    from glucoscope.readings.tasks import process_patients

    assert process_patients.apply(args=[[987654]]).successful()
