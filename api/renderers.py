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
        return orjson.dumps(data, default=_plain, option=orjson.OPT_PASSTHROUGH_SUBCLASS)


def _plain(value: Any) -> Any:
    # With OPT_PASSTHROUGH_SUBCLASS every subclass lands here, including DRF's ReturnDict/ReturnList
    # (serializer.errors): those must stay objects and arrays, not become their Python repr.
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    return str(value)
