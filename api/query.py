"""Query-string parsing shared by the read endpoints; errors name the parameter."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request

from glucoscope.readings.validation import ERR_UNIT, FieldErrors, parse_timestamp, parse_unit

ERR_RANGE_ORDER = "end must be after start."
ERR_RANGE_TOO_LONG = "The range is limited to {days} days per request; page through shorter ranges."


def time_range(request: Request, *, default: timedelta = timedelta(hours=24)) -> tuple[datetime, datetime]:
    """`start`/`end` as ISO 8601 with offset or epoch ms; default the last 24 h; bounded length."""
    now = timezone.now()
    errors: FieldErrors = {}
    end_raw = request.query_params.get("end")
    start_raw = request.query_params.get("start")
    end = parse_timestamp(end_raw, now=now + timedelta(days=3650), errors=errors, field="end") if end_raw else now
    start = parse_timestamp(start_raw, now=now + timedelta(days=3650), errors=errors, field="start") if start_raw else None
    if errors:
        raise ValidationError(errors)
    assert end is not None
    if start is None:
        start = end - default
    if end <= start:
        raise ValidationError({"end": [ERR_RANGE_ORDER]})
    max_days = settings.READINGS_MAX_RANGE_DAYS
    if end - start > timedelta(days=max_days):
        raise ValidationError({"start": [ERR_RANGE_TOO_LONG.format(days=max_days)]})
    return start, end


def glucose_unit(request: Request, *, default: str) -> str:
    raw = request.query_params.get("unit")
    if raw is None:
        return default
    errors: FieldErrors = {}
    unit = parse_unit(raw, errors=errors)
    if unit is None:
        raise ValidationError({"unit": [ERR_UNIT]})
    return unit
