"""Fixtures for notification tests: the local FCM stub, a transport pointed at it, and helpers.

The integration fixtures are imported so the worker test here can use them (pytest registers
fixtures imported into a conftest).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from glucoscope.readings.models import GlucoseReading, ReadingSource
from notifications.fcm import FcmTransport
from notifications.fcm_stub import FcmStub
from tests.integration.conftest import (  # noqa: F401
    celery_worker_factory,
    celery_worker_private_redis,
    celery_worker_process,
    private_redis,
    real_services,
)


@pytest.fixture
def fcm_stub() -> Iterator[FcmStub]:
    with FcmStub() as stub:
        yield stub


@pytest.fixture
def transport(fcm_stub: FcmStub) -> FcmTransport:
    """The real firebase-admin path against the stub; backoff sleeps are recorded, not slept."""
    sleeps: list[float] = []
    t = FcmTransport(credentials_file=fcm_stub.credentials_file, endpoint=fcm_stub.url, timeout_seconds=5,
                     max_attempts=3, sleep=sleeps.append)
    t.sleeps = sleeps  # type: ignore[attr-defined]
    return t


@pytest.fixture
def fcm_settings(settings, fcm_stub: FcmStub):  # type: ignore[no-untyped-def]
    """Point the settings-built transport at the stub (the path tasks use)."""
    settings.FIREBASE_CREDENTIALS_FILE = fcm_stub.credentials_file
    settings.FCM_ENDPOINT = fcm_stub.url
    settings.FCM_MAX_ATTEMPTS = 1
    return settings


def add_readings(patient, values: list[float], *, end: datetime | None = None, step_minutes: int = 5) -> None:  # type: ignore[no-untyped-def]
    """Readings ending at `end` (default now), oldest first, 5 minutes apart."""
    end = end or timezone.now()
    GlucoseReading.objects.bulk_create(
        GlucoseReading(
            patient=patient, measured_at=end - timedelta(minutes=step_minutes * (len(values) - 1 - i)),
            value_mgdl=value, source=ReadingSource.APP, received_at=end,
        )
        for i, value in enumerate(values)
    )
