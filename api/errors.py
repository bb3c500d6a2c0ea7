"""API error responses: DRF's field-level 4xx bodies, plus 503 (never a 500 traceback) when the database is down."""

from __future__ import annotations

import logging
from typing import Any

from django.db import InterfaceError, OperationalError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)

ERR_UNAVAILABLE = "The service is temporarily unavailable; retry shortly."


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, (OperationalError, InterfaceError)):
        logger.error("Database unavailable: %s", exc)
        return Response({"detail": ERR_UNAVAILABLE}, status=503, headers={"Retry-After": "5"})
    return drf_exception_handler(exc, context)
