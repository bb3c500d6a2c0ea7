"""Production configuration: HTTPS, HSTS, secure cookies, CORS allowlist, no browsable API, no internals in
error responses, JSON-only Celery. Tests run with DEBUG=false (production mode); `check --deploy` is in
tests/test_settings.py.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import OperationalError
from django.test import Client
from django.urls import include, path
from kombu.exceptions import ContentDisallowed
from kombu.message import Message
from kombu.serialization import prepare_accept_content
from rest_framework.response import Response
from rest_framework.test import APIClient
from rest_framework.views import APIView

from glucoscope.celery import app as celery_app
from tests.conftest import World, bearer

REPO_ROOT = Path(__file__).resolve().parents[2]
ALLOWED_ORIGIN = "https://app.glucoscope.example"

# Things that must never reach a client: stack traces, settings, SQL, file paths, the database address.
INTERNALS = ("Traceback", 'File "', "SECRET_KEY", "django.", "psycopg", "SELECT ", "/work/", "site-packages",
             "5432", "DATABASE", "Exception Value", "settings.py")


def production_settings(**env: str) -> dict[str, object]:
    """The settings a production process gets (fresh interpreter, DEBUG unset, only SECRET_KEY given)."""
    clean = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECURE_SSL_REDIRECT"}}
    code = (
        "import json, glucoscope.settings as s; print(json.dumps({k: getattr(s, k, None) for k in ["
        "'DEBUG', 'SECURE_SSL_REDIRECT', 'SECURE_HSTS_SECONDS', 'SECURE_HSTS_INCLUDE_SUBDOMAINS', 'SECURE_PROXY_SSL_HEADER',"
        "'SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', 'CORS_ALLOWED_ORIGINS',"
        "'CORS_ALLOW_ALL_ORIGINS', 'CELERY_ACCEPT_CONTENT', 'CELERY_TASK_SERIALIZER']}"
        " | {'renderers': s.REST_FRAMEWORK['DEFAULT_RENDERER_CLASSES']}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env={**clean, **env}, capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_production_defaults_are_https_only_with_secure_cookies_and_no_browsable_api() -> None:
    s = production_settings(CORS_ALLOWED_ORIGINS=ALLOWED_ORIGIN)
    assert s["DEBUG"] is False
    assert s["SECURE_SSL_REDIRECT"] is True
    assert isinstance(s["SECURE_HSTS_SECONDS"], int) and s["SECURE_HSTS_SECONDS"] >= 31_536_000
    assert s["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert s["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert s["SESSION_COOKIE_SECURE"] is True and s["CSRF_COOKIE_SECURE"] is True  # HttpOnly: the cookie test below
    assert s["CORS_ALLOWED_ORIGINS"] == [ALLOWED_ORIGIN] and not s["CORS_ALLOW_ALL_ORIGINS"]
    assert s["renderers"] == ["api.renderers.OrjsonRenderer"]
    assert s["CELERY_ACCEPT_CONTENT"] == ["json"] and s["CELERY_TASK_SERIALIZER"] == "json"


@pytest.mark.django_db
def test_plain_http_is_redirected_and_https_answers_carry_hsts(world: World, settings) -> None:  # type: ignore[no-untyped-def]
    settings.SECURE_SSL_REDIRECT = True  # the production default (the test suite turns it off)
    response = Client().get("/api/v1/me")
    assert response.status_code == 301 and response["Location"] == "https://testserver/api/v1/me"
    # Behind the TLS proxy: X-Forwarded-Proto says the client used HTTPS.
    response = bearer(world.alice.user).get("/api/v1/me", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 200
    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert response["X-Content-Type-Options"] == "nosniff"


@pytest.mark.django_db
def test_session_and_csrf_cookies_are_secure_and_http_only(world: World) -> None:
    client = Client(enforce_csrf_checks=False)
    login_page = client.get("/care/login/", secure=True)
    csrf = login_page.cookies["csrftoken"]
    assert csrf["secure"]
    response = client.post("/care/login/", {"username": "dr-dan", "password": "correct-horse-battery"}, secure=True)
    session = response.cookies["sessionid"]
    assert session["secure"] and session["httponly"] and session["samesite"] == "Lax"


@pytest.mark.django_db
def test_cors_answers_only_allowlisted_origins(world: World, settings) -> None:  # type: ignore[no-untyped-def]
    settings.CORS_ALLOWED_ORIGINS = [ALLOWED_ORIGIN]
    client = bearer(world.alice.user)
    allowed = client.get("/api/v1/me", HTTP_ORIGIN=ALLOWED_ORIGIN)
    assert allowed["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    other = client.get("/api/v1/me", HTTP_ORIGIN="https://evil.example")
    assert "Access-Control-Allow-Origin" not in other
    preflight = APIClient().options("/api/v1/readings", HTTP_ORIGIN="https://evil.example",
                                    HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")
    assert "Access-Control-Allow-Origin" not in preflight
    preflight = APIClient().options("/api/v1/readings", HTTP_ORIGIN=ALLOWED_ORIGIN,
                                    HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")
    assert preflight["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN


@pytest.mark.django_db
def test_no_browsable_api_for_html_clients(world: World) -> None:
    client = bearer(world.alice.user)
    for kwargs in ({"HTTP_ACCEPT": "text/html"}, {"HTTP_ACCEPT": "text/html,application/xhtml+xml,*/*;q=0.8"}):
        response = client.get("/api/v1/me", **kwargs)
        assert response.status_code in (200, 406)
        assert response["Content-Type"].startswith("application/json")
        assert b"<html" not in response.content.lower()
    response = client.get("/api/v1/me?format=api")
    assert response.status_code == 404 and b"<html" not in response.content.lower()


# --- Error responses carry no internals -----------------------------------------------------------

class _Crash(APIView):
    authentication_classes: list[type] = []
    permission_classes: list[type] = []

    def get(self, request: object) -> Response:
        raise RuntimeError(f"boom at /work/main/api/views.py with SECRET_KEY={os.environ.get('SECRET_KEY')}")


class _DatabaseDown(APIView):
    authentication_classes: list[type] = []
    permission_classes: list[type] = []

    def get(self, request: object) -> Response:
        raise OperationalError('connection to server at "10.0.0.5", port 5432 failed: FATAL: password authentication '
                               'failed for user "glucoscope" SELECT 1')


urlpatterns = [
    path("api/v1/test-crash", _Crash.as_view()),
    path("api/v1/test-db-down", _DatabaseDown.as_view()),
    path("", include("glucoscope.urls")),
]


def assert_no_internals(body: bytes) -> None:
    text = body.decode(errors="replace")
    leaked = [marker for marker in INTERNALS if marker in text]
    assert not leaked, (leaked, text[:500])


@pytest.mark.django_db
def test_error_responses_carry_no_internals(world: World, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ROOT_URLCONF = __name__
    client = Client(raise_request_exception=False)
    cases = {
        "404 API": client.get("/api/v1/patients/999999/readings", HTTP_AUTHORIZATION=f"Bearer {_access(world)}"),
        "404 unknown API path": client.get("/api/v1/no-such-thing"),
        "404 page": client.get("/no-such-page/"),
        "405": client.put("/api/v1/patients", HTTP_AUTHORIZATION=f"Bearer {_access(world)}"),
        "401": client.get("/api/v1/me", HTTP_AUTHORIZATION="Bearer not.a.jwt"),
        "500": client.get("/api/v1/test-crash"),
        "503": client.get("/api/v1/test-db-down"),
    }
    expected = {"404 API": 404, "404 unknown API path": 404, "404 page": 404, "405": 405, "401": 401, "500": 500,
                "503": 503}
    for name, response in cases.items():
        assert response.status_code == expected[name], (name, response.status_code)
        assert_no_internals(response.content)
    assert cases["503"]["Retry-After"] and cases["503"].json() == {"detail": "The service is temporarily unavailable; retry shortly."}
    assert cases["405"].json()["detail"]


def _access(world: World) -> str:
    from rest_framework_simplejwt.tokens import RefreshToken

    return str(RefreshToken.for_user(world.alice.user).access_token)


@pytest.mark.django_db
def test_status_endpoints_reveal_nothing_sensitive(world: World) -> None:
    for url in ("/healthz", "/nightscout/api/v1/status.json"):
        response = Client().get(url)
        assert response.status_code == 200
        assert_no_internals(response.content)
        text = response.content.decode()
        assert os.environ.get("SECRET_KEY", "x" * 40) not in text and "postgres://" not in text and "redis://" not in text


# --- Celery accepts only JSON ------------------------------------------------------------------------

def test_celery_accepts_only_json() -> None:
    assert list(celery_app.conf.accept_content) == ["json"]
    assert celery_app.conf.task_serializer == "json" and celery_app.conf.result_serializer == "json"
    accept = prepare_accept_content(celery_app.conf.accept_content)
    # A pickled task body (remote code execution if unpickled) is refused before it is deserialised.
    pickled = Message(body=pickle.dumps(([], {}, {})), content_type="application/x-python-serialize",
                      content_encoding="binary", accept=accept)
    with pytest.raises(ContentDisallowed):
        pickled.decode()
    yaml_body = Message(body=b"[[], {}, {}]", content_type="application/x-yaml", content_encoding="utf-8", accept=accept)
    with pytest.raises(ContentDisallowed):
        yaml_body.decode()
    # The control: the same kind of message in JSON is accepted.
    ok = Message(body=json.dumps([[], {}, {}]).encode(), content_type="application/json", content_encoding="utf-8",
                 accept=accept)
    assert ok.decode() == [[], {}, {}]
