from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from rest_framework.renderers import BaseRenderer


class OrjsonRenderer(BaseRenderer):
    media_type = "application/json"
    format = "json"
    charset = None

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Mapping[str, Any] | None = None) -> bytes:
        if data is None:
            return b""
        # Django's lazy translation strings and DRF's ErrorDetail are str subclasses; `default` covers the rest.
        try:
            return orjson.dumps(data, default=_plain, option=orjson.OPT_PASSTHROUGH_SUBCLASS)
        except orjson.JSONEncodeError:
            # PostgreSQL's jsonb gives a stored 1.3e175 back as its 176 integer digits, beyond orjson's 64-bit
            # integers; one such Nightscout document made every read of the collection a 500 (found by the
            # schemathesis run, tests/fuzz). Render those as JSON floats, their value when they were sent.
            return orjson.dumps(_wide_ints_as_floats(data), default=_plain, option=orjson.OPT_PASSTHROUGH_SUBCLASS)


def _plain(value: Any) -> Any:
    # With OPT_PASSTHROUGH_SUBCLASS every subclass lands here, including DRF's ReturnDict/ReturnList
    # (serializer.errors): those must stay objects and arrays, not become their Python repr.
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    return str(value)


_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1


def _wide_ints_as_floats(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _wide_ints_as_floats(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_wide_ints_as_floats(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and not _INT_MIN <= value <= _UINT_MAX:
        try:
            return float(value)
        except OverflowError:  # beyond any double: no JSON number can carry it faithfully
            return str(value)
    return value
