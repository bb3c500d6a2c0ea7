"""Treatment batches from people (native API) and from Nightscout uploaders."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.utils import timezone

from glucoscope.patients.models import Role, User
from glucoscope.patients.selectors import patients_writable_for_treatments
from glucoscope.readings import services
from glucoscope.readings.batches import ERR_PATIENT_NOT_ALLOWED, ERR_PATIENT_REQUIRED, BatchOutcome
from glucoscope.readings.models import ReadingSource
from glucoscope.readings.validation import (
    ERR_CARBS,
    ERR_INSULIN,
    ERR_NOT_OBJECT,
    FieldErrors,
    TreatmentInput,
    parse_native_treatment,
    parse_optional_number,
    parse_timestamp,
    parse_treatment_amounts,
)


def _bind(item: TreatmentInput, patient_id: int) -> TreatmentInput:
    item.patient_id = patient_id
    return item


def treatment_batch_ingest(*, user: User, items: Sequence[Any]) -> BatchOutcome:
    """Patients log for themselves; caregivers and clinicians name the patient."""
    now = timezone.now()
    outcome = BatchOutcome()
    parsed: list[TreatmentInput] = []
    for index, item in enumerate(items):
        result = parse_native_treatment(index, item, now=now)
        if isinstance(result, TreatmentInput):
            parsed.append(result)
        else:
            outcome.rejected.append({"index": index, "errors": result})
    own_patient_id = user.patient.pk if user.role == Role.PATIENT and hasattr(user, "patient") else None
    wanted = {item.patient_id for item in parsed if item.patient_id is not None}
    allowed = set(patients_writable_for_treatments(user=user).filter(pk__in=wanted).values_list("pk", flat=True))
    to_store: list[TreatmentInput] = []
    for item in parsed:
        patient_id = item.patient_id if item.patient_id is not None else own_patient_id
        if patient_id is None:
            outcome.rejected.append({"index": item.index, "errors": {"patient": [ERR_PATIENT_REQUIRED]}})
        elif patient_id != own_patient_id and patient_id not in allowed:
            outcome.rejected.append({"index": item.index, "errors": {"patient": [ERR_PATIENT_NOT_ALLOWED]}})
        else:
            item.entered_by_label = item.entered_by_label or user.username
            to_store.append(_bind(item, patient_id))
    outcome.rejected.sort(key=lambda entry: entry["index"])
    outcome.patient_ids = {item.patient_id for item in to_store if item.patient_id is not None}
    new_ids = services.treatments_ingest(treatments=to_store, source=ReadingSource.APP, entered_by_id=user.pk)
    outcome.accepted = sum(1 for new_id in new_ids if new_id)
    outcome.duplicates = len(new_ids) - outcome.accepted
    return outcome


# Nightscout eventTypes that carry a basal rate or exercise; everything else with no
# carbs or insulin is kept as a note so nothing an uploader sent is dropped.
_NS_BASAL_EVENTS = {"temp basal", "temp basal start", "basal"}
_NS_EXERCISE_EVENTS = {"exercise"}


def parse_nightscout_treatment(index: int, item: Any, *, now: datetime) -> list[TreatmentInput] | FieldErrors:
    """One Nightscout treatment → one row per kind it carries (a Meal Bolus is carbs plus a bolus)."""
    if not isinstance(item, dict):
        return {"non_field_errors": [ERR_NOT_OBJECT]}
    errors: FieldErrors = {}
    raw_time = item.get("created_at") or item.get("timestamp") or item.get("date") or item.get("mills")
    occurred_at = parse_timestamp(raw_time, now=now, errors=errors, field="created_at")
    event_type = str(item.get("eventType") or "")[:64]
    carbs = parse_optional_number(item.get("carbs"), low=0, high=500, message=ERR_CARBS, errors=errors, field="carbs")
    insulin = parse_optional_number(item.get("insulin"), low=0, high=100, message=ERR_INSULIN, errors=errors, field="insulin")
    amounts = parse_treatment_amounts(
        {"basal_rate_u_per_h": item.get("absolute", item.get("rate")), "duration_minutes": item.get("duration")}, errors
    )
    notes = item.get("notes") or ""
    entered_by = str(item.get("enteredBy") or "")[:100]
    if errors or occurred_at is None:
        return errors
    note = str(notes)[:2000]
    common: dict[str, Any] = {"event_type": event_type, "entered_by_label": entered_by, "note": note}
    rows: list[TreatmentInput] = []
    if carbs:
        rows.append(TreatmentInput(index, None, occurred_at, "carbs", carbs_g=carbs, **common))
    if insulin:
        rows.append(TreatmentInput(index, None, occurred_at, "bolus", insulin_units=insulin, **common))
    lowered = event_type.lower()
    if lowered in _NS_BASAL_EVENTS and amounts["basal_rate_u_per_h"] is not None:
        rows.append(TreatmentInput(index, None, occurred_at, "basal", basal_rate_u_per_h=amounts["basal_rate_u_per_h"],
                                   duration_minutes=amounts["duration_minutes"], **common))
    elif lowered in _NS_EXERCISE_EVENTS:
        rows.append(TreatmentInput(index, None, occurred_at, "exercise", duration_minutes=amounts["duration_minutes"], **common))
    if not rows:
        rows.append(TreatmentInput(index, None, occurred_at, "note", duration_minutes=amounts["duration_minutes"], **common))
    return rows


def nightscout_treatment_batch_ingest(*, patient_id: int, items: Sequence[Any]) -> tuple[list[int | None], list[dict[str, Any]]]:
    """Returns, per input item, the id of its first row (new or already stored), and the rejected items."""
    from glucoscope.readings.models import Treatment

    now = timezone.now()
    rejected: list[dict[str, Any]] = []
    rows: list[TreatmentInput] = []
    row_owner: list[int] = []
    for index, item in enumerate(items):
        result = parse_nightscout_treatment(index, item, now=now)
        if isinstance(result, dict):
            rejected.append({"index": index, "errors": result})
            continue
        for row in result:
            rows.append(_bind(row, patient_id))
            row_owner.append(index)
    services.treatments_ingest(treatments=rows, source=ReadingSource.NIGHTSCOUT, entered_by_id=None)
    ids_by_key = {
        (t.occurred_at, t.kind): t.pk
        for t in Treatment.objects.filter(patient_id=patient_id, occurred_at__in={r.occurred_at for r in rows})
    }
    first_id: dict[int, int | None] = {}
    for owner, stored_row in zip(row_owner, rows, strict=True):
        first_id.setdefault(owner, ids_by_key.get((stored_row.occurred_at, stored_row.kind)))
    return [first_id.get(index) for index in range(len(items))], rejected
