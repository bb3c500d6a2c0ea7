"""/readyz: 200 with per-check states when usable, 503 when not, and never internals in the body."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from rest_framework.test import APIClient

from forecasting.models import ModelVersion

pytestmark = pytest.mark.django_db
ARTIFACT = Path(django_settings.BASE_DIR) / django_settings.FORECASTER_DEFAULT_ARTIFACT


def test_ready_when_the_database_redis_and_the_model_are_usable() -> None:
    response = APIClient().get("/readyz")
    expected_redis = "ok" if django_settings.REDIS_URL else "not_used"
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "redis": expected_redis, "model": "ok"}}


def test_redis_is_reported_as_not_used_in_the_embedded_mode(settings) -> None:  # type: ignore[no-untyped-def]
    settings.REDIS_URL = ""
    response = APIClient().get("/readyz")
    assert response.status_code == 200 and response.json()["checks"]["redis"] == "not_used"


def test_unreachable_redis_is_503_without_hosts_or_errors(settings) -> None:  # type: ignore[no-untyped-def]
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = APIClient().get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "not_ready", "checks": {"database": "ok", "redis": "failing", "model": "ok"}}
    assert b"127.0.0.1" not in response.content and b"rror" not in response.content


def test_a_corrupted_model_artifact_is_503(tmp_path: Path) -> None:
    shutil.copy(ARTIFACT, tmp_path / ARTIFACT.name)
    weights = json.loads(ARTIFACT.read_text()).get("weights_file", "forecaster.pt")
    (tmp_path / weights).write_bytes((ARTIFACT.parent / weights).read_bytes()[:-16] + b"\0" * 16)
    ModelVersion.objects.filter(is_active=True).update(is_active=False)
    ModelVersion.objects.create(
        version="tampered", checksum=json.loads(ARTIFACT.read_text())["sha256"],
        artifact_path=str(tmp_path / ARTIFACT.name), is_active=True,
    )
    response = APIClient().get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["model"] == "failing"
    assert str(tmp_path).encode() not in response.content


def test_a_missing_model_artifact_is_503(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings.FORECASTER_DEFAULT_ARTIFACT = str(tmp_path / "absent.json")
    ModelVersion.objects.filter(is_active=True).update(is_active=False)
    response = APIClient().get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["model"] == "failing"


def test_liveness_checks_nothing_else(settings) -> None:  # type: ignore[no-untyped-def]
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = APIClient().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
