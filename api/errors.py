"""API error responses: DRF's field-level 4xx bodies, plus 503 (never a 500 traceback) when the database is down."""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from glucoscope.retry import TRANSIENT_ERRORS

logger = logging.getLogger(__name__)

ERR_UNAVAILABLE = "The service is temporarily unavailable; retry shortly."
ERR_NOT_FOUND = "Not found."
RETRY_AFTER_SECONDS = "5"
# API clients parse JSON; the care-team pages keep Django's HTML 404.
API_PREFIXES = ("/api/", "/nightscout/")


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, TRANSIENT_ERRORS):
        logger.error("Database unavailable: %s", exc)
        return Response({"detail": ERR_UNAVAILABLE}, status=503, headers={"Retry-After": RETRY_AFTER_SECONDS})
    return drf_exception_handler(exc, context)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: an exception outside a DRF view (a care page, a middleware such as the audit write).

    A database error there is an outage, not a bug: it answers the same 503 as the API's views
    (JSON on the API paths, plain text elsewhere). Django calls this inside its `except` block,
    so the exception is `sys.exc_info()`. Anything else is Django's plain 500 page.
    """
    exc = sys.exc_info()[1]
    if not isinstance(exc, TRANSIENT_ERRORS):
        return defaults.server_error(request)
    logger.error("Database unavailable: %s", exc)
    if request.path.startswith(API_PREFIXES):
        response: HttpResponse = JsonResponse({"detail": ERR_UNAVAILABLE}, status=503)
    else:
        response = HttpResponse(ERR_UNAVAILABLE, status=503, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = RETRY_AFTER_SECONDS
    return response


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler404: a URL no route matches (e.g. `/patients/abc/readings`) answers JSON on the API paths too."""
    if request.path.startswith(API_PREFIXES):
        return JsonResponse({"detail": ERR_NOT_FOUND}, status=404)
    return defaults.page_not_found(request, exception)
