"""Request ids: taken from the client when safe, generated otherwise, returned, and on every log line of the request."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest
from rest_framework.test import APIClient

from glucoscope.observability.logs import JsonFormatter, RequestContextFilter


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The production handler set-up (context filter + JSON formatter) on the root logger, into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_a_client_request_id_round_trips_and_is_on_every_log_line_of_the_request(json_log: io.StringIO) -> None:
    # An unknown path: Django logs "Not Found" from inside the request, and the middleware logs the access line.
    response = APIClient().get("/no-such-page", HTTP_X_REQUEST_ID="client-id-1234.abc")
    assert response.status_code == 404
    assert response["X-Request-ID"] == "client-id-1234.abc"
    records = lines(json_log)
    assert {r["logger"] for r in records} >= {"django.request", "glucoscope.request"}, records
    assert all(r.get("request_id") == "client-id-1234.abc" for r in records), records
    access = next(r for r in records if r["logger"] == "glucoscope.request")
    assert access["route"] == "unmatched" and access["status"] == 404 and isinstance(access["duration_ms"], float)


def test_an_id_is_generated_when_the_client_sends_none_and_differs_per_request(json_log: io.StringIO) -> None:
    first = APIClient().get("/healthz")
    second = APIClient().get("/healthz")
    assert first.status_code == 200
    assert len(first["X-Request-ID"]) == 32 and first["X-Request-ID"] != second["X-Request-ID"]
    assert [r["request_id"] for r in lines(json_log) if r["logger"] == "glucoscope.request"] == [
        first["X-Request-ID"], second["X-Request-ID"],
    ]


@pytest.mark.parametrize("malicious", [
    "abc\nFAKE LOG LINE level=ERROR",  # log forging
    "x" * 65,  # too long
    "short",  # too short to be unique
    '"><script>alert(1)</script>',
    "id with spaces 123",
])
def test_a_malicious_or_malformed_id_is_replaced(json_log: io.StringIO, malicious: str) -> None:
    response = APIClient().get("/healthz", HTTP_X_REQUEST_ID=malicious)
    assert response["X-Request-ID"] != malicious and len(response["X-Request-ID"]) == 32
    assert malicious not in json_log.getvalue()
    assert all(r["request_id"] == response["X-Request-ID"] for r in lines(json_log))


def test_json_lines_carry_extra_fields_and_the_exception() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed %s", ("here",), exc_info=__import__("sys").exc_info(),
            extra={"patient_ids": [1, 2]},
        )
    RequestContextFilter().filter(record)
    entry = orjson.loads(formatter.format(record))
    assert entry["message"] == "failed here" and entry["level"] == "ERROR" and entry["patient_ids"] == [1, 2]
    assert "ValueError: boom" in entry["exception"] and "request_id" not in entry  # none outside a request


def test_logging_is_json_in_production_and_plain_in_debug() -> None:
    from glucoscope.observability.logs import logging_config

    assert logging_config(log_format="json", level="INFO")["handlers"]["console"]["formatter"] == "json"
    assert logging_config(log_format="plain", level="INFO")["handlers"]["console"]["formatter"] == "plain"
    from django.conf import settings

    assert settings.LOG_FORMAT == ("plain" if settings.DEBUG else "json")
