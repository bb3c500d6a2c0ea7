"""Query-string parsing shared by the read endpoints; errors name the parameter."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request

from glucoscope.readings.validation import ERR_UNIT, FieldErrors, parse_timestamp, parse_unit

ERR_RANGE_ORDER = "end must be after start."
ERR_RANGE_TOO_LONG = "The range is limited to {days} days per request; page through shorter ranges."
ERR_PAGE_SIZE = "page_size must be a whole number of at least 1 (at most {maximum} are returned)."


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


class StrictPageSizeMixin:
    """For CursorPagination: DRF silently ignores a page_size it cannot parse (`abc`, `0`, `-1`, `2.5`), so the
    client gets the default without knowing why; answer 400 naming the parameter. A size above the maximum is
    capped, as documented."""

    page_size: int
    page_size_query_param = "page_size"
    max_page_size: int

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        maximum = self.max_page_size
        if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
            raise ValidationError({"page_size": [ERR_PAGE_SIZE.format(maximum=maximum)]})
        return min(int(raw), maximum)


def page_size_parameter(maximum: int, default: int) -> OpenApiParameter:
    return OpenApiParameter("page_size", {"type": "integer", "minimum": 1},
                            description=f"Default {default}; larger values are capped at {maximum}.")
