"""API error responses: DRF's field-level 4xx bodies, plus 503 (never a 500 traceback) when the database is down."""

from __future__ import annotations

import logging
from typing import Any

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)

ERR_UNAVAILABLE = "The service is temporarily unavailable; retry shortly."
ERR_NOT_FOUND = "Not found."
# API clients parse JSON; the care-team pages keep Django's HTML 404.
API_PREFIXES = ("/api/", "/nightscout/")


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, (OperationalError, InterfaceError)):
        logger.error("Database unavailable: %s", exc)
        return Response({"detail": ERR_UNAVAILABLE}, status=503, headers={"Retry-After": "5"})
    return drf_exception_handler(exc, context)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler404: a URL no route matches (e.g. `/patients/abc/readings`) answers JSON on the API paths too."""
    if request.path.startswith(API_PREFIXES):
        return JsonResponse({"detail": ERR_NOT_FOUND}, status=404)
    return defaults.page_not_found(request, exception)
