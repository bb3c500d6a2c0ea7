"""Fixtures for the schemathesis run: the app as WSGI in-process, and the `world` with data behind real ids.

The fuzzer talks to Django's WSGI handler in the test's own thread, so it shares the pytest-django test
transaction: every operation × role starts from the same `world` and nothing it writes leaks to the next one.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.utils import timezone
from rest_framework_simplejwt.tokens import RefreshToken

from glucoscope.patients.models import CareTeamConsent, User
from glucoscope.readings.batches import Uploader, reading_batch_ingest
from glucoscope.readings.models import ReadingSource
from glucoscope.readings.treatments import treatment_batch_ingest
from notifications import reminders, services
from tests.conftest import World

# Statuses answered per (operation, role), summarised at the end of the run.
OBSERVED: dict[tuple[str, str], Counter[int]] = {}
_STARTED = time.monotonic()


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    if not OBSERVED:
        return
    requests = sum(sum(c.values()) for c in OBSERVED.values())
    statuses: Counter[int] = Counter()
    for counter in OBSERVED.values():
        statuses.update(counter)
    operations = len({label for label, _ in OBSERVED})
    roles = len({role for _, role in OBSERVED})
    terminalreporter.write_line(
        f"fuzz: {operations} operations x {roles} roles = {len(OBSERVED)} runs, {requests} generated requests "
        f"in {time.monotonic() - _STARTED:.0f} s; statuses {dict(sorted(statuses.items()))}"
    )


@dataclass
class FuzzWorld:
    """Request headers per role, and the ids that exist, so generated paths hit real objects too."""

    world: World
    ids: dict[str, list[int]] = field(default_factory=dict)

    def headers(self, role: str) -> dict[str, str]:
        """Only the credential of the role under test is minted (each Bearer token is a database row)."""
        world = self.world
        people = {"patient": world.alice.user, "caregiver": world.caregiver, "clinician": world.clinician,
                  "staff": world.staff}
        if role in people:
            return _bearer(people[role])
        if role == "vendor":
            return {"Authorization": f"Api-Key {world.vendor_key}"}
        if role == "nightscout":
            return {"api-secret": hashlib.sha1(world.alice_ns_secret.encode()).hexdigest()}
        assert role == "anonymous", role
        return {}


def _bearer(user: User) -> dict[str, str]:
    return {"Authorization": f"Bearer {RefreshToken.for_user(user).access_token}"}


@pytest.fixture
def wsgi_in_test_transaction() -> Iterator[None]:
    """Django's WSGI handler closes "old" connections around each request; inside the test transaction that
    would close the connection holding the test data. Django's own test client disconnects it the same way."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


# Roles that can read alice's record; the others are refused before any of it is read, so they skip the data
# (they still aim at alice's real ids, to prove an existing record is refused like a missing one).
ROLES_WITH_ACCESS = {"patient", "caregiver", "clinician", "nightscout"}


@pytest.fixture
def fuzz_world(request: pytest.FixtureRequest, world: World, settings,  # type: ignore[no-untyped-def]
               wsgi_in_test_transaction: None) -> FuzzWorld:
    # schemathesis' WSGI transport sends Host: localhost; production settings allow no host by default.
    settings.ALLOWED_HOSTS = ["localhost", "testserver"]
    alice = world.alice
    care_teams = list(CareTeamConsent.objects.filter(patient=alice).values_list("care_team_id", flat=True))
    ids = {
        "patient_id": [alice.pk, world.bob.pk],
        "care_team_id": care_teams,
        "caregiver_id": [world.caregiver.pk],
        "user_id": [alice.user.pk, world.caregiver.pk],
    }
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("role") not in ROLES_WITH_ACCESS:
        return FuzzWorld(world=world, ids=ids)
    now = timezone.now()
    # Six hours of 5-minute readings (a low and a high among them), so reads, metrics and exports have data.
    items = [
        {"patient": alice.pk, "timestamp": (now - timedelta(minutes=5 * i)).isoformat(),
         "value": 60 + (i * 7) % 220, "unit": "mg/dL", "trend": "Flat"}
        for i in range(1, 73)
    ]
    items[3]["value"], items[4]["value"] = "Low", "High"
    reading_batch_ingest(uploader=Uploader(source=ReadingSource.APP, patient_id=alice.pk), items=items)
    treatment_batch_ingest(user=alice.user, items=[{"timestamp": (now - timedelta(hours=2)).isoformat(), "carbs_g": 45}])
    notification = services.notification_create(patient=alice, recipient=alice.user, kind="low",
                                                details={"value_mgdl": 65})
    reminder = reminders.reminder_create(patient=alice, created_by=alice.user,
                                         data={"kind": "medication", "local_time": "08:30", "label": "Metformin"})
    ids["notification_id"] = [notification.pk] if notification else []
    ids["reminder_id"] = [reminder.pk]
    return FuzzWorld(world=world, ids=ids)
