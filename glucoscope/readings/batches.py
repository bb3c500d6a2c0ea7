"""Batch ingest as callers see it: parse each item, bind it to a patient the uploader may
write for, store what is valid and report the rest item by item.

The native API, the Nightscout API and the CSV import all come through here, so they
share one set of validation and duplicate rules.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.utils import timezone

from glucoscope.observability.metrics import record_ingest
from glucoscope.patients.selectors import patient_devices_by_serial, vendor_links
from glucoscope.readings import services
from glucoscope.readings.models import GlucoseReading
from glucoscope.readings.validation import FieldErrors, ReadingInput, parse_native_reading

ERR_PATIENT_NOT_ALLOWED = "Unknown patient, or not one this credential may post for."
ERR_PATIENT_REQUIRED = "Give the patient id, or the serial of a device linked to a patient."
ERR_DEVICE_UNKNOWN = "Unknown device serial, or not a device this credential may post for."
ERR_DEVICE_UNLINKED = "This device is not linked to a patient."
ERR_DEVICE_PATIENT_MISMATCH = "This device is linked to a different patient."


@dataclass(frozen=True, slots=True)
class Uploader:
    """Who is writing. A patient-bound uploader (app, Nightscout, import) has patient_id; a vendor has vendor_id."""

    source: str
    patient_id: int | None = None
    vendor_id: int | None = None


@dataclass(slots=True)
class BatchOutcome:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    stored: list[ReadingInput] = field(default_factory=list)
    # The patients the batch wrote for (accepted or duplicate items), for the audit log.
    patient_ids: set[int] = field(default_factory=set)

    def as_response(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected}


def _resolve(uploader: Uploader, inputs: Sequence[ReadingInput]) -> list[ReadingInput | FieldErrors]:
    """Bind each item to a patient and device within the uploader's scope, or explain why not."""
    serials = {item.device_serial for item in inputs if item.device_serial}
    resolved: list[ReadingInput | FieldErrors] = []

    if uploader.vendor_id is not None:
        links = vendor_links(
            vendor_id=uploader.vendor_id,
            serials=serials,
            patient_ids={item.patient_id for item in inputs if item.patient_id is not None},
        )
        for item in inputs:
            patient_id: int | None
            device_id: int | None
            if item.device_serial:
                link = links.device_by_serial.get(item.device_serial)
                if link is None:
                    resolved.append({"device": [ERR_DEVICE_UNKNOWN]})
                    continue
                device_id, patient_id = link
                if patient_id is None:
                    resolved.append({"device": [ERR_DEVICE_UNLINKED]})
                    continue
                if item.patient_id is not None and item.patient_id != patient_id:
                    resolved.append({"device": [ERR_DEVICE_PATIENT_MISMATCH]})
                    continue
            elif item.patient_id is None:
                resolved.append({"patient": [ERR_PATIENT_REQUIRED]})
                continue
            else:
                devices = links.devices_by_patient.get(item.patient_id)
                if not devices:
                    resolved.append({"patient": [ERR_PATIENT_NOT_ALLOWED]})
                    continue
                patient_id = item.patient_id
                device_id = devices[0] if len(devices) == 1 else None
            resolved.append(_bind(item, patient_id, device_id))
        return resolved

    own_patient_id = uploader.patient_id
    if own_patient_id is None:
        raise ValueError("An uploader needs a patient_id or a vendor_id")
    devices_by_serial = patient_devices_by_serial(patient_id=own_patient_id, serials=serials) if serials else {}
    for item in inputs:
        if item.patient_id is not None and item.patient_id != own_patient_id:
            resolved.append({"patient": [ERR_PATIENT_NOT_ALLOWED]})
            continue
        device_id = None
        if item.device_serial:
            device_id = devices_by_serial.get(item.device_serial)
            if device_id is None:
                resolved.append({"device": [ERR_DEVICE_UNKNOWN]})
                continue
        resolved.append(_bind(item, own_patient_id, device_id))
    return resolved


def _bind(item: ReadingInput, patient_id: int, device_id: int | None) -> ReadingInput:
    item.patient_id, item.device_id = patient_id, device_id
    return item


ItemParser = Callable[[int, Any, datetime], "ReadingInput | FieldErrors"]


def _native_parser(index: int, item: Any, now: datetime) -> ReadingInput | FieldErrors:
    return parse_native_reading(index, item, now=now)


def reading_batch_ingest(
    *, uploader: Uploader, items: Sequence[Any], parse_item: ItemParser = _native_parser
) -> BatchOutcome:
    """Validate and store a batch; valid items are stored even when others are rejected."""
    now = timezone.now()
    outcome = BatchOutcome()
    inputs: list[ReadingInput] = []
    for index, item in enumerate(items):
        parsed = parse_item(index, item, now)
        if isinstance(parsed, ReadingInput):
            inputs.append(parsed)
        else:
            outcome.rejected.append({"index": index, "errors": parsed})
    to_store: list[ReadingInput] = []
    for item, bound in zip(inputs, _resolve(uploader, inputs), strict=True):
        if isinstance(bound, ReadingInput):
            to_store.append(bound)
        else:
            outcome.rejected.append({"index": item.index, "errors": bound})
    outcome.stored = to_store
    outcome.patient_ids = {item.patient_id for item in to_store if item.patient_id is not None}
    outcome.rejected.sort(key=lambda entry: entry["index"])
    result = services.readings_ingest(readings=to_store, source=uploader.source)
    outcome.accepted, outcome.duplicates = result.accepted, result.duplicates
    record_ingest(source=uploader.source, outcome=outcome)
    return outcome


def readings_matching_stored(
    *, patient_id: int, readings: Sequence[ReadingInput]
) -> list[GlucoseReading | None]:
    """For each reading just ingested, the stored row it became or duplicated (for Nightscout `_id`s)."""
    if not readings:
        return []
    window = services.NEAR_DUPLICATE_WINDOW
    candidates = list(
        GlucoseReading.objects.filter(
            patient_id=patient_id,
            measured_at__gt=min(r.measured_at for r in readings) - window,
            measured_at__lt=max(r.measured_at for r in readings) + window,
        ).order_by("measured_at")
    )
    times = [c.measured_at for c in candidates]
    matches: list[GlucoseReading | None] = []
    for reading in readings:
        lo = bisect.bisect_right(times, reading.measured_at - window)
        hi = bisect.bisect_left(times, reading.measured_at + window)
        same = [
            c for c in candidates[lo:hi]
            if c.value_mgdl == reading.value_mgdl and c.sensor_flag == reading.sensor_flag
        ]
        exact = [c for c in candidates[lo:hi] if c.measured_at == reading.measured_at]
        pool = same or exact
        matches.append(min(pool, key=lambda c: abs(c.measured_at - reading.measured_at)) if pool else None)
    return matches


