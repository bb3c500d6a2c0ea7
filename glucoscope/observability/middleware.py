"""The first middleware: a request id for every log line of the request, and the latency histogram."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.core.signals import request_finished
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse

from glucoscope.observability import metrics
from glucoscope.observability.context import request_id_from_client, request_id_var

REQUEST_ID_HEADER = "X-Request-ID"
access_logger = logging.getLogger("glucoscope.request")


class RequestObservabilityMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_id_from_client(request.headers.get(REQUEST_ID_HEADER))
        # Cleared on request_finished, not when this returns: Django logs 4xx/5xx responses
        # ("Not Found: …") after the middleware chain, and those lines belong to the request too.
        request_id_var.set(request_id)
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        # The route *name*, never the path: paths carry patient ids (unbounded label values).
        match = getattr(request, "resolver_match", None)
        route = match.view_name if match and match.view_name else "unmatched"
        metrics.record_request(route=route, method=request.method or "", status=response.status_code, seconds=elapsed)
        access_logger.info(
            "%s %s %d %.1f ms", request.method, route, response.status_code, elapsed * 1000,
            extra={"route": route, "method": request.method, "status": response.status_code,
                   "duration_ms": round(elapsed * 1000, 1)},
        )
        response[REQUEST_ID_HEADER] = request_id
        return response


@receiver(request_finished)
def _clear_request_id(**kwargs: object) -> None:
    request_id_var.set(None)
