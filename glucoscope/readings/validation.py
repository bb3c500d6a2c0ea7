"""Fast, plain-Python validation of incoming readings and treatments.

A per-item ModelSerializer costs ~100 µs per reading; vendors post 10,000 at a time,
so these parsers work on dicts directly and collect errors per item instead of raising.
The error texts are module constants so tests can assert them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from glucoscope.patients.models import MGDL_PER_MMOLL
from glucoscope.readings.models import MAX_GLUCOSE_MGDL, MIN_GLUCOSE_MGDL, Direction, SensorFlag

FieldErrors = dict[str, list[str]]

# No consumer CGM existed before 2000; anything older is a unit or clock error.
OLDEST_ACCEPTED = datetime(2000, 1, 1, tzinfo=timezone.utc)
MAX_CLOCK_SKEW = timedelta(minutes=5)

ERR_REQUIRED = "This field is required."
ERR_TIMESTAMP_FORMAT = "Must be ISO 8601 with a UTC offset (e.g. 2026-11-26T10:05:00+01:00) or epoch milliseconds."
ERR_TIMESTAMP_NAIVE = "ISO 8601 timestamp has no UTC offset; add one such as +01:00 or Z."
ERR_TIMESTAMP_FUTURE = "Timestamp is more than 5 minutes in the future."
ERR_TIMESTAMP_TOO_OLD = "Timestamp is before 2000-01-01; epoch values must be in milliseconds, not seconds."
ERR_VALUE_NOT_NUMBER = 'Must be a number, or the string "Low" or "High".'
ERR_VALUE_RANGE_MGDL = "Must be between 20 and 600 mg/dL; use \"Low\" or \"High\" for sensor limits."
ERR_VALUE_RANGE_MMOLL = "Must be between 1.1 and 33.3 mmol/L; use \"Low\" or \"High\" for sensor limits."
ERR_UNIT = 'Must be "mg/dL" or "mmol/L".'
ERR_TREND = "Unknown trend; use a Nightscout direction such as Flat, SingleUp or FortyFiveDown."
ERR_TREND_RATE = "Must be a number in mg/dL per minute between -20 and 20."
ERR_NOT_OBJECT = "Each item must be a JSON object."
ERR_INTEGER_ID = "Must be an integer id."

_UNITS = {"mg/dl": "mg/dL", "mmol/l": "mmol/L"}


def _direction_key(raw: str) -> str:
    return raw.replace(" ", "").replace("_", "").lower()


# Both spellings of every direction (GUIDE.md §6): Nightscout's "NOT COMPUTABLE",
# Loop's "NotComputable", Dexcom v3's "notComputable" all normalise to one key.
_DIRECTIONS: dict[str, str] = {_direction_key(choice.value): choice.value for choice in Direction}
# share2nightscout-bridge and Dexcom Share send the arrow as a number 0-9.
_DEXCOM_TREND_NUMBERS = {
    0: Direction.NONE, 1: Direction.DOUBLE_UP, 2: Direction.SINGLE_UP, 3: Direction.FORTY_FIVE_UP,
    4: Direction.FLAT, 5: Direction.FORTY_FIVE_DOWN, 6: Direction.SINGLE_DOWN, 7: Direction.DOUBLE_DOWN,
    8: Direction.NOT_COMPUTABLE, 9: Direction.RATE_OUT_OF_RANGE,
}


def parse_timestamp(raw: Any, *, now: datetime, errors: FieldErrors, field: str = "timestamp") -> datetime | None:
    """ISO 8601 with an offset (also `+0100`, as xDrip+ writes it) or epoch milliseconds → aware UTC."""
    moment: datetime
    if type(raw) is str:
        # Hot path for vendors' ISO strings; anything unusual falls through to the full checks below.
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            pass
        else:
            if moment.tzinfo is not None:
                moment = moment.astimezone(timezone.utc)
                if OLDEST_ACCEPTED <= moment <= now + MAX_CLOCK_SKEW:
                    return moment
    if raw is None or raw == "":
        errors[field] = [ERR_REQUIRED]
        return None
    if isinstance(raw, bool):
        errors[field] = [ERR_TIMESTAMP_FORMAT]
        return None
    if isinstance(raw, (int, float)):
        if not math.isfinite(raw) or abs(raw) > 1e15:
            errors[field] = [ERR_TIMESTAMP_FORMAT]
            return None
        moment = datetime.fromtimestamp(raw / 1000.0, tz=timezone.utc)
    elif isinstance(raw, str):
        text = raw.strip()
        if text.isdigit():
            return parse_timestamp(int(text), now=now, errors=errors, field=field)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            errors[field] = [ERR_TIMESTAMP_FORMAT]
            return None
        if moment.tzinfo is None:
            errors[field] = [ERR_TIMESTAMP_NAIVE]
            return None
        moment = moment.astimezone(timezone.utc)
    else:
        errors[field] = [ERR_TIMESTAMP_FORMAT]
        return None
    if moment > now + MAX_CLOCK_SKEW:
        errors[field] = [ERR_TIMESTAMP_FUTURE]
        return None
    if moment < OLDEST_ACCEPTED:
        errors[field] = [ERR_TIMESTAMP_TOO_OLD]
        return None
    return moment


def parse_unit(raw: Any, *, errors: FieldErrors, default: str | None = None) -> str | None:
    if raw is None and default is not None:
        return default
    if raw in _UNITS_VERBATIM:
        return _UNITS_VERBATIM[raw]
    if not isinstance(raw, str) or raw.strip().lower() not in _UNITS:
        errors["unit"] = [ERR_REQUIRED if raw is None else ERR_UNIT]
        return None
    return _UNITS[raw.strip().lower()]


def parse_glucose(raw: Any, *, unit: str | None, errors: FieldErrors, field: str = "value") -> tuple[float | None, str]:
    """Returns (mg/dL or None, sensor flag). "Low"/"High" are kept as flags, never as invented numbers."""
    if type(raw) is int and unit == "mg/dL" and MIN_GLUCOSE_MGDL <= raw <= MAX_GLUCOSE_MGDL:
        return float(raw), SensorFlag.NONE
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word == "low":
            return None, SensorFlag.LOW
        if word == "high":
            return None, SensorFlag.HIGH
        try:
            raw = float(word)
        except ValueError:
            errors[field] = [ERR_VALUE_NOT_NUMBER]
            return None, SensorFlag.NONE
    if raw is None:
        errors[field] = [ERR_REQUIRED]
        return None, SensorFlag.NONE
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        errors[field] = [ERR_VALUE_NOT_NUMBER]
        return None, SensorFlag.NONE
    if unit is None:
        return None, SensorFlag.NONE
    mgdl = float(raw) * MGDL_PER_MMOLL if unit == "mmol/L" else float(raw)
    # Half a unit of rounding slack, so 1.1 mmol/L (19.8 mg/dL) is not rejected for arithmetic.
    if not (MIN_GLUCOSE_MGDL - 0.5 <= mgdl <= MAX_GLUCOSE_MGDL + 0.5):
        errors[field] = [ERR_VALUE_RANGE_MMOLL if unit == "mmol/L" else ERR_VALUE_RANGE_MGDL]
        return None, SensorFlag.NONE
    return round(min(max(mgdl, MIN_GLUCOSE_MGDL), MAX_GLUCOSE_MGDL), 1), SensorFlag.NONE


# The exact spellings uploaders send, looked up before any normalising (the hot path).
_DIRECTIONS_VERBATIM: dict[str, str] = {
    **{choice.value: choice.value for choice in Direction}, "NotComputable": "NOT COMPUTABLE", "RateOutOfRange": "RATE OUT OF RANGE",
}
_UNITS_VERBATIM = {"mg/dL": "mg/dL", "mmol/L": "mmol/L"}


def parse_direction(raw: Any, *, errors: FieldErrors, field: str = "trend") -> str:
    if raw is None or raw == "":
        return ""
    if isinstance(raw, str) and raw in _DIRECTIONS_VERBATIM:
        return _DIRECTIONS_VERBATIM[raw]
    if isinstance(raw, int) and not isinstance(raw, bool) and raw in _DEXCOM_TREND_NUMBERS:
        return _DEXCOM_TREND_NUMBERS[raw].value
    if isinstance(raw, str) and _direction_key(raw) in _DIRECTIONS:
        return _DIRECTIONS[_direction_key(raw)]
    errors[field] = [ERR_TREND]
    return ""


def parse_optional_number(
    raw: Any, *, low: float, high: float, message: str, errors: FieldErrors, field: str
) -> float | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or not low <= raw <= high:
        errors[field] = [message]
        return None
    return float(raw)


def parse_optional_int(raw: Any, *, errors: FieldErrors, field: str) -> int | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        errors[field] = [ERR_INTEGER_ID]
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip())
    errors[field] = [ERR_INTEGER_ID]
    return None


@dataclass(slots=True)
class ReadingInput:
    """One validated reading. The batch binds it in place to a patient (and device) the caller
    may write for, setting patient_id and device_id, before it is stored; one object per
    reading all the way, as 10,000-item batches are the normal case."""

    index: int
    patient_id: int | None
    device_serial: str | None
    measured_at: datetime
    value_mgdl: float | None
    sensor_flag: str
    direction: str
    trend_rate: float | None
    is_calibration: bool = False
    device_id: int | None = None


def _parse_native_reading_fast(index: int, item: dict[str, Any], now: datetime) -> ReadingInput | None:
    """The shape vendors post thousands of times a batch, checked inline; None means "take the full path"."""
    if len(item) > 6 or "trend_rate" in item:
        return None
    stamp, value, unit = item.get("timestamp"), item.get("value"), item.get("unit")
    if type(stamp) is not str or unit not in _UNITS_VERBATIM:
        return None
    if type(value) is int or type(value) is float:
        number = float(value)
    else:
        return None
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    moment = moment.astimezone(timezone.utc)
    if not OLDEST_ACCEPTED <= moment <= now + MAX_CLOCK_SKEW:
        return None
    mgdl = number * MGDL_PER_MMOLL if unit == "mmol/L" else number
    if not MIN_GLUCOSE_MGDL <= mgdl <= MAX_GLUCOSE_MGDL:
        return None
    trend = item.get("trend")
    if trend is None:
        direction = ""
    elif type(trend) is str and trend in _DIRECTIONS_VERBATIM:
        direction = _DIRECTIONS_VERBATIM[trend]
    else:
        return None
    patient = item.get("patient")
    device = item.get("device")
    if (patient is not None and type(patient) is not int) or (device is not None and (type(device) is not str or not device or len(device) > 100)):
        return None
    return ReadingInput(index, patient, device, moment, round(mgdl, 1), SensorFlag.NONE, direction, None)


def parse_native_reading(index: int, item: Any, *, now: datetime) -> ReadingInput | FieldErrors:
    """Validate one item of `POST /api/v1/readings`: `{patient, device?, timestamp, value, unit, trend?}`."""
    if type(item) is dict:
        fast = _parse_native_reading_fast(index, item, now)
        if fast is not None:
            return fast
    if not isinstance(item, dict):
        return {"non_field_errors": [ERR_NOT_OBJECT]}
    errors: FieldErrors = {}
    patient_id = parse_optional_int(item.get("patient"), errors=errors, field="patient")
    device_raw = item.get("device")
    device_serial = str(device_raw).strip() if device_raw not in (None, "") else None
    if device_serial is not None and len(device_serial) > 100:
        errors["device"] = ["Device serial is longer than 100 characters."]
    measured_at = parse_timestamp(item.get("timestamp"), now=now, errors=errors)
    unit = parse_unit(item.get("unit"), errors=errors)
    value, flag = parse_glucose(item.get("value"), unit=unit, errors=errors)
    direction = parse_direction(item.get("trend"), errors=errors)
    trend_rate = parse_optional_number(
        item.get("trend_rate"), low=-20, high=20, message=ERR_TREND_RATE, errors=errors, field="trend_rate"
    )
    if errors or measured_at is None:
        return errors
    return ReadingInput(index, patient_id, device_serial, measured_at, value, flag, direction, trend_rate)


ERR_TREATMENT_KIND = "Must be one of: carbs, bolus, basal, exercise, note."
ERR_CARBS = "Carbohydrates must be a number of grams greater than 0 and at most 500."
ERR_INSULIN = "Insulin must be a number of units greater than 0 and at most 100."
ERR_BASAL_RATE = "Basal rate must be a number of U/h between 0 and 35."
ERR_DURATION = "Duration must be a number of minutes between 0 and 1440."
ERR_NOTE_REQUIRED = "A note needs text."
ERR_NOTE_LENGTH = "Notes are limited to 2,000 characters."
TREATMENT_KINDS = ("carbs", "bolus", "basal", "exercise", "note")
# Which amount each kind must carry; the others are optional context.
_REQUIRED_AMOUNT = {"carbs": "carbs_g", "bolus": "insulin_units", "basal": "basal_rate_u_per_h", "exercise": "duration_minutes"}


@dataclass(slots=True)
class TreatmentInput:
    index: int
    patient_id: int | None
    occurred_at: datetime
    kind: str
    carbs_g: float | None = None
    insulin_units: float | None = None
    basal_rate_u_per_h: float | None = None
    duration_minutes: float | None = None
    note: str = ""
    event_type: str = ""
    entered_by_label: str = ""


def parse_treatment_amounts(item: dict[str, Any], errors: FieldErrors) -> dict[str, float | None]:
    return {
        "carbs_g": parse_optional_number(item.get("carbs_g"), low=0.1, high=500, message=ERR_CARBS, errors=errors, field="carbs_g"),
        "insulin_units": parse_optional_number(
            item.get("insulin_units"), low=0.01, high=100, message=ERR_INSULIN, errors=errors, field="insulin_units"
        ),
        "basal_rate_u_per_h": parse_optional_number(
            item.get("basal_rate_u_per_h"), low=0, high=35, message=ERR_BASAL_RATE, errors=errors, field="basal_rate_u_per_h"
        ),
        "duration_minutes": parse_optional_number(
            item.get("duration_minutes"), low=0, high=1440, message=ERR_DURATION, errors=errors, field="duration_minutes"
        ),
    }


def parse_native_treatment(index: int, item: Any, *, now: datetime) -> TreatmentInput | FieldErrors:
    """Validate one item of `POST /api/v1/treatments`."""
    if not isinstance(item, dict):
        return {"non_field_errors": [ERR_NOT_OBJECT]}
    errors: FieldErrors = {}
    patient_id = parse_optional_int(item.get("patient"), errors=errors, field="patient")
    occurred_at = parse_timestamp(item.get("timestamp"), now=now, errors=errors)
    kind = item.get("kind")
    if kind not in TREATMENT_KINDS:
        errors["kind"] = [ERR_REQUIRED if kind is None else ERR_TREATMENT_KIND]
    amounts = parse_treatment_amounts(item, errors)
    required = _REQUIRED_AMOUNT.get(kind) if isinstance(kind, str) else None
    if required and amounts[required] is None and required not in errors:
        errors[required] = [ERR_REQUIRED]
    note = item.get("note") or ""
    if not isinstance(note, str):
        errors["note"] = ["Must be text."]
        note = ""
    elif len(note) > 2000:
        errors["note"] = [ERR_NOTE_LENGTH]
    elif kind == "note" and not note.strip():
        errors["note"] = [ERR_NOTE_REQUIRED]
    if errors or occurred_at is None:
        return errors
    return TreatmentInput(
        index, patient_id, occurred_at, str(kind), carbs_g=amounts["carbs_g"], insulin_units=amounts["insulin_units"],
        basal_rate_u_per_h=amounts["basal_rate_u_per_h"], duration_minutes=amounts["duration_minutes"], note=note,
    )
