"""Liveness, readiness and the metrics endpoint: for orchestrators and scrapers, not for people.

None of them authenticate through the API's schemes, none is throttled (probes poll every few
seconds from one address), and none reveals internals: checks are reported by name and state only.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from glucoscope.observability import metrics
from glucoscope.observability.readiness import readiness

CHECK_STATES = ["ok", "failing", "not_used"]


class ProbeApi(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes: list[Any] = []


class HealthApi(ProbeApi):
    """Liveness: the process answers. It checks nothing else, so a database outage does not restart every web process."""

    @extend_schema(responses=inline_serializer("Health", {"status": serializers.CharField()}))
    def get(self, request: Request) -> Response:
        return Response({"status": "ok"})


class ReadinessApi(ProbeApi):
    """Readiness: 200 when the database, Redis (if configured) and the forecasting model are usable, else 503."""

    @extend_schema(
        responses={
            (200, "application/json"): inline_serializer("Readiness", {
                "status": serializers.ChoiceField(["ready", "not_ready"]),
                "checks": inline_serializer("ReadinessChecks", {
                    "database": serializers.ChoiceField(CHECK_STATES),
                    "redis": serializers.ChoiceField(CHECK_STATES),
                    "model": serializers.ChoiceField(CHECK_STATES),
                }),
            }),
            (503, "application/json"): inline_serializer("NotReady", {
                "status": serializers.ChoiceField(["ready", "not_ready"]),
                "checks": serializers.DictField(child=serializers.ChoiceField(CHECK_STATES)),
            }),
        }
    )
    def get(self, request: Request) -> Response:
        checks = readiness()
        ready = all(state != "failing" for state in checks.values())
        return Response(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE,
        )


class MetricsApi(ProbeApi):
    """Prometheus text format, for allowlisted addresses (METRICS_ALLOWED_IPS) or METRICS_BEARER_TOKEN."""

    @extend_schema(exclude=True)
    def get(self, request: Request) -> HttpResponse:
        if not metrics.metrics_client_allowed(
            remote_addr=request.META.get("REMOTE_ADDR"), authorization=request.META.get("HTTP_AUTHORIZATION"),
        ):
            # 404, not 403: the endpoint's existence is not advertised to the public.
            return HttpResponse(b'{"detail": "Not found."}', status=404, content_type="application/json")
        from prometheus_client import CONTENT_TYPE_LATEST

        return HttpResponse(metrics.render(), content_type=CONTENT_TYPE_LATEST)
