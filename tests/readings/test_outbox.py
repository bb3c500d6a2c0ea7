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
    # Held by a live task, so the re-sent tasks cannot coalesce it either.
    PatientOutbox.objects.create(patient=fresh, dirty_at=now, enqueued_at=now, taken_at=now)
    assert services.outbox_sweep() == 2
    assert list(PatientOutbox.objects.values_list("patient_id", flat=True)) == [fresh.pk]


def test_a_missing_patient_is_logged_and_the_task_returns() -> None:
    from glucoscope.readings.tasks import process_patients

    assert process_patients.apply(args=[[987654]]).successful()


def queued_rows(count: int) -> list[int]:
    """Patients whose processing tasks are sent but not started yet (enqueued, not taken)."""
    patients = [PatientFactory() for _ in range(count)]
    now = timezone.now()
    PatientOutbox.objects.bulk_create(PatientOutbox(patient=p, dirty_at=now, enqueued_at=now) for p in patients)
    return [p.pk for p in patients]


def test_a_starting_task_takes_its_own_patient_first_and_coalesces_the_queued_ones() -> None:
    first, *others = queued_rows(3)
    taken = services.outbox_take(patient_ids=[first])
    assert taken[0] == first and sorted(taken) == sorted([first, *others])
    # The queued tasks of the coalesced patients find them held by a live run and do nothing.
    assert services.outbox_take(patient_ids=[others[0]]) == []


def test_a_task_takes_at_most_one_batch(settings) -> None:  # type: ignore[no-untyped-def]
    ids = queued_rows(5)
    settings.OUTBOX_PATIENTS_PER_TASK = 2
    assert len(services.outbox_take(patient_ids=[ids[0]])) == 2
    assert len(services.outbox_take(patient_ids=[ids[4]])) == 2


def test_a_row_held_by_a_lost_task_is_taken_again(settings) -> None:  # type: ignore[no-untyped-def]
    (patient_id,) = queued_rows(1)
    PatientOutbox.objects.filter(pk=patient_id).update(
        taken_at=timezone.now() - settings.OUTBOX_STALE_AFTER - timedelta(seconds=1)
    )
    assert services.outbox_take(patient_ids=[patient_id]) == [patient_id]


def test_a_redelivered_task_after_completion_processes_nothing() -> None:
    patient = PatientFactory()
    assert services.outbox_take(patient_ids=[patient.pk]) == []
    services.patients_process(patient_ids=[patient.pk])
    assert not PatientSummary.objects.filter(patient=patient).exists()


def test_the_sweeper_frees_a_stale_row_for_the_task_it_sends(settings) -> None:  # type: ignore[no-untyped-def]
    (patient_id,) = queued_rows(1)
    long_ago = timezone.now() - settings.OUTBOX_STALE_AFTER - timedelta(seconds=1)
    PatientOutbox.objects.filter(pk=patient_id).update(enqueued_at=long_ago, taken_at=long_ago)
    assert services.outbox_sweep() == 1
    # Eager tasks: the re-sent task took the row, processed the patient and released it.
    assert not PatientOutbox.objects.filter(pk=patient_id).exists()
    assert PatientSummary.objects.filter(patient_id=patient_id).exists()
