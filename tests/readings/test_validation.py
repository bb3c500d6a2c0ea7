"""The item parsers: timestamps, units, Low/High, directions."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from glucoscope.readings import validation as v

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("raw, expected", [
    ("2026-11-26T10:05:00.000+0100", datetime(2026, 11, 26, 9, 5, tzinfo=timezone.utc)),  # xDrip+
    ("2026-11-26T09:05:00Z", datetime(2026, 11, 26, 9, 5, tzinfo=timezone.utc)),
    ("2026-11-26T04:05:00-05:00", datetime(2026, 11, 26, 9, 5, tzinfo=timezone.utc)),
    (1795683900000, datetime(2026, 11, 26, 9, 5, tzinfo=timezone.utc)),
    ("1795683900000", datetime(2026, 11, 26, 9, 5, tzinfo=timezone.utc)),
    (1795683900000.0, datetime(2026, 11, 26, 9, 5, tzinfo=timezone.utc)),
])
def test_timestamps_in_every_accepted_form_become_utc(raw: object, expected: datetime) -> None:
    errors: v.FieldErrors = {}
    assert v.parse_timestamp(raw, now=NOW, errors=errors) == expected
    assert errors == {}


@pytest.mark.parametrize("raw, message", [
    ("2026-11-26 10:00", v.ERR_TIMESTAMP_NAIVE),
    ("26/11/2026", v.ERR_TIMESTAMP_FORMAT),
    (True, v.ERR_TIMESTAMP_FORMAT),
    (float("nan"), v.ERR_TIMESTAMP_FORMAT),
    (1795683900, v.ERR_TIMESTAMP_TOO_OLD),  # seconds, not milliseconds
    ("2026-11-26T10:06:00Z", v.ERR_TIMESTAMP_FUTURE),
    (None, v.ERR_REQUIRED),
    ([], v.ERR_TIMESTAMP_FORMAT),
])
def test_bad_timestamps_are_explained(raw: object, message: str) -> None:
    errors: v.FieldErrors = {}
    assert v.parse_timestamp(raw, now=NOW, errors=errors) is None
    assert errors == {"timestamp": [message]}


def test_a_timestamp_within_five_minutes_of_clock_skew_is_accepted() -> None:
    errors: v.FieldErrors = {}
    assert v.parse_timestamp("2026-11-26T10:04:59Z", now=NOW, errors=errors) is not None


@pytest.mark.parametrize("raw, unit, expected", [
    (100, "mg/dL", (100.0, "")),
    ("100", "mg/dL", (100.0, "")),
    (5.5, "mmol/L", (99.1, "")),
    (1.1, "mmol/L", (20.0, "")),
    (33.3, "mmol/L", (599.9, "")),
    ("Low", "mg/dL", (None, "low")),
    ("HIGH", "mmol/L", (None, "high")),
    (20, "mg/dL", (20.0, "")),
    (600, "mg/dL", (600.0, "")),
])
def test_glucose_is_stored_in_mgdl_and_sensor_limits_as_flags(raw: object, unit: str, expected: tuple[float | None, str]) -> None:
    errors: v.FieldErrors = {}
    assert v.parse_glucose(raw, unit=unit, errors=errors) == expected
    assert errors == {}


@pytest.mark.parametrize("raw, unit", [(19, "mg/dL"), (601, "mg/dL"), (0.5, "mmol/L"), (34, "mmol/L"), (float("inf"), "mg/dL")])
def test_out_of_range_glucose_is_rejected(raw: float, unit: str) -> None:
    errors: v.FieldErrors = {}
    v.parse_glucose(raw, unit=unit, errors=errors)
    assert "value" in errors


@pytest.mark.parametrize("raw, expected", [
    ("Flat", "Flat"), ("flat", "Flat"), ("NotComputable", "NOT COMPUTABLE"), ("NOT COMPUTABLE", "NOT COMPUTABLE"),
    ("RateOutOfRange", "RATE OUT OF RANGE"), ("fortyFiveDown", "FortyFiveDown"), (4, "Flat"), (1, "DoubleUp"), (None, ""),
])
def test_directions_in_every_spelling(raw: object, expected: str) -> None:
    errors: v.FieldErrors = {}
    assert v.parse_direction(raw, errors=errors) == expected
    assert errors == {}


@pytest.mark.parametrize("raw", ["mg/dl", "MG/DL", "mmol/l", "mmol/L"])
def test_unit_spellings(raw: str) -> None:
    errors: v.FieldErrors = {}
    assert v.parse_unit(raw, errors=errors) in {"mg/dL", "mmol/L"}
