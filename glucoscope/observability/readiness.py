"""Readiness: can this process serve? The database answers, the broker answers, the model is intact.

Each check returns True or False and never raises: the caller reports only names and states,
never hosts, DSNs or exception text (logged here instead, for the operator).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from django.conf import settings
from django.db import connection

logger = logging.getLogger(__name__)

# (path, size, mtime_ns) -> sha256: the weights are hashed once per file version, not per probe.
_checksum_cache: dict[tuple[str, int, int], str] = {}


def database_ready() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except Exception:  # any driver error means "not ready"
        logger.warning("Readiness: database check failed", exc_info=True)
        return False


def redis_ready() -> bool | None:
    """None when no broker is configured (embedded mode: tasks run in-process)."""
    if not settings.REDIS_URL:
        return None
    import redis

    try:
        return bool(redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        logger.warning("Readiness: Redis check failed", exc_info=True)
        return False


def _sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _checksum_cache:
        _checksum_cache.clear()
        _checksum_cache[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _checksum_cache[key]


def model_ready() -> bool:
    """The active forecaster (or the shipped one, before first use) is loaded here or its weights match their checksum.

    This is what a worker's model cache loads (forecasting.services.forecaster_for); the web
    process does not load torch itself, it proves the artifact a worker will load is intact.
    """
    from forecasting import services
    from forecasting.models import ModelVersion

    try:
        active = ModelVersion.objects.filter(name="forecaster", is_active=True).first()
        if active is not None and active.pk in services._loaded:
            return True
        artifact = services._resolve_artifact(active.artifact_path if active else settings.FORECASTER_DEFAULT_ARTIFACT)
        metadata = json.loads(artifact.read_text())
        weights = artifact.parent / metadata.get("weights_file", artifact.with_suffix(".pt").name)
        expected = active.checksum if active else metadata.get("sha256")
        return bool(expected) and _sha256(weights) == expected
    except Exception:  # missing file, bad JSON, database error: not ready
        logger.warning("Readiness: forecasting model check failed", exc_info=True)
        return False


def readiness() -> dict[str, str]:
    """Per check: "ok", "failing" or "not_used"."""
    redis_state = redis_ready()
    return {
        "database": "ok" if database_ready() else "failing",
        "redis": "not_used" if redis_state is None else ("ok" if redis_state else "failing"),
        "model": "ok" if model_ready() else "failing",
    }
