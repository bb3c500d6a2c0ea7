"""Role × endpoint × method matrix, built from the URL configuration.

Every route the project serves must appear in EXPECTED, so a new endpoint cannot be
added without deciding, and testing, who may call it.
"""

from __future__ import annotations

import json
from datetime import timedelta
from itertools import count
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from rest_framework.views import APIView
from rest_framework_simplejwt.tokens import RefreshToken

from tests.conftest import World

ROLES = ["anonymous", "patient", "other_patient", "caregiver", "clinician", "other_clinician", "revoked_clinician",
         "staff", "vendor", "other_vendor", "nightscout"]
PEOPLE = {"patient", "other_patient", "caregiver", "clinician", "other_clinician", "revoked_clinician", "staff"}
NON_PEOPLE = {"anonymous": 401, "nightscout": 401, "vendor": 403, "other_vendor": 403}


def everyone(status: int) -> dict[str, int]:
    return dict.fromkeys(ROLES, status)


def people_only(**people: int) -> dict[str, int]:
    return {**NON_PEOPLE, **dict.fromkeys(PEOPLE, 200), **people}


# Reading a patient's data: their own app, their caregiver and consenting care team; 404 for everyone else.
PATIENT_SCOPED_READ = people_only(other_patient=404, other_clinician=404, revoked_clinician=404, staff=404)
NIGHTSCOUT_ONLY = {**everyone(401), "nightscout": 200}

# A patient's own sharing controls: only patients, each acting on their own record.
PATIENTS_ONLY = {**everyone(403), "anonymous": 401, "nightscout": 401}

EXPECTED: dict[tuple[str, str], dict[str, int]] = {
    ("v1:my-consents", "get"): {**PATIENTS_ONLY, "patient": 200, "other_patient": 200},
    ("v1:my-consents", "post"): {**PATIENTS_ONLY, "patient": 201, "other_patient": 201},
    ("v1:my-consent", "delete"): {**PATIENTS_ONLY, "patient": 204, "other_patient": 404},
    ("v1:my-caregivers", "get"): {**PATIENTS_ONLY, "patient": 200, "other_patient": 200},
    ("v1:my-caregivers", "post"): {**PATIENTS_ONLY, "patient": 201, "other_patient": 201},
    ("v1:my-caregiver", "delete"): {**PATIENTS_ONLY, "patient": 204, "other_patient": 404},
    ("healthz", "get"): everyone(200),
    ("readyz", "get"): everyone(200),
    # Answered by source address, not by role: the test client comes from 127.0.0.1, which the default
    # METRICS_ALLOWED_IPS admits. tests/observability/test_metrics.py shows any other address gets 404.
    ("metrics", "get"): everyone(200),
    ("schema", "get"): everyone(200),
    ("api-docs", "get"): everyone(200),
    ("v1:token", "post"): everyone(200),
    ("v1:token-refresh", "post"): everyone(200),
    # Signing out: a person revokes their own refresh token (someone else's is a 400 naming `refresh`).
    ("v1:logout", "post"): {**people_only(**dict.fromkeys(PEOPLE, 400)), "patient": 204},
    ("v1:revoke-all", "post"): people_only(),
    ("v1:me", "get"): people_only(),
    # Patient rights (issue 6): a patient exports or deletes only their own account. The matrix sends a
    # wrong password, so deletion answers 403 here; tests/security/test_patient_rights.py deletes for real.
    ("v1:me", "delete"): PATIENTS_ONLY,
    ("v1:my-export", "get"): {**PATIENTS_ONLY, "patient": 200, "other_patient": 200},
    ("v1:my-access-log", "get"): {**PATIENTS_ONLY, "patient": 200, "other_patient": 200},
    ("v1:patients", "get"): people_only(),
    ("v1:patient-readings", "get"): PATIENT_SCOPED_READ,
    ("v1:patient-summary", "get"): PATIENT_SCOPED_READ,
    ("v1:patient-treatments", "get"): PATIENT_SCOPED_READ,
    ("v1:patient-forecast", "get"): PATIENT_SCOPED_READ,
    ("v1:patient-forecasts", "get"): PATIENT_SCOPED_READ,
    # Readings: the patient's own app or a linked vendor. Others with a person token are refused
    # outright; a patient or vendor naming someone else's patient gets the item rejected (400).
    ("v1:readings", "post"): {**everyone(403), "anonymous": 401, "nightscout": 401, "patient": 200, "vendor": 200,
                              "other_patient": 400, "other_vendor": 400},
    ("v1:treatments", "post"): people_only(other_patient=400, other_clinician=400, revoked_clinician=400, staff=400),
    ("nightscout:ns-entries", "get"): NIGHTSCOUT_ONLY,
    ("nightscout:ns-entries", "post"): NIGHTSCOUT_ONLY,
    ("nightscout:ns-entries-sgv", "get"): NIGHTSCOUT_ONLY,
    ("nightscout:ns-entries-sgv", "post"): NIGHTSCOUT_ONLY,
    ("nightscout:ns-entries-current", "get"): NIGHTSCOUT_ONLY,
    ("nightscout:ns-treatments", "get"): NIGHTSCOUT_ONLY,
    ("nightscout:ns-treatments", "post"): NIGHTSCOUT_ONLY,
    ("nightscout:ns-devicestatus", "get"): NIGHTSCOUT_ONLY,
    ("nightscout:ns-devicestatus", "post"): NIGHTSCOUT_ONLY,
    ("nightscout:ns-devicestatus", "put"): NIGHTSCOUT_ONLY,
    ("nightscout:ns-profile", "get"): NIGHTSCOUT_ONLY,
    ("nightscout:ns-profile", "post"): NIGHTSCOUT_ONLY,
    ("nightscout:ns-profile", "put"): NIGHTSCOUT_ONLY,
    ("nightscout:ns-status", "get"): everyone(200),
    ("nightscout:ns-verifyauth", "get"): everyone(200),
    ("nightscout:ns-experiments-test", "get"): NIGHTSCOUT_ONLY,
    ("v1:patient-metrics", "get"): PATIENT_SCOPED_READ,
    ("v1:patient-agp", "get"): PATIENT_SCOPED_READ,
    ("v1:patient-risk-indicators", "get"): PATIENT_SCOPED_READ,
    ("v1:patient-export", "get"): PATIENT_SCOPED_READ,
    ("v1:patient-fhir-cgm-summary", "get"): PATIENT_SCOPED_READ,
    # Importing a FHIR CGM bundle: the patient's own app; others who can see the patient are refused.
    ("v1:patient-fhir-submit-cgm-bundle", "post"): {**PATIENT_SCOPED_READ, "caregiver": 403, "clinician": 403},
    # Notifications (issue 5). Devices and the inbox belong to whoever is signed in; a notification
    # addressed to someone else is 404. Reminders: the patient and their care team write, caregivers read.
    ("v1:my-devices", "post"): people_only(**dict.fromkeys(PEOPLE, 201)),
    ("v1:my-devices", "delete"): people_only(**dict.fromkeys(PEOPLE, 404)),  # the matrix's token was never registered
    ("v1:my-notification-preferences", "get"): {**PATIENTS_ONLY, "patient": 200, "other_patient": 200},
    ("v1:my-notification-preferences", "patch"): {**PATIENTS_ONLY, "patient": 200, "other_patient": 200},
    ("v1:my-notifications", "get"): people_only(),
    ("v1:my-notification-ack", "post"): {**people_only(**dict.fromkeys(PEOPLE, 404)), "patient": 200},
    ("v1:my-notification-feedback", "post"): {**people_only(**dict.fromkeys(PEOPLE, 404)), "patient": 200},
    ("v1:my-notification-receipt", "post"): {**people_only(**dict.fromkeys(PEOPLE, 404)), "patient": 200},
    ("v1:patient-notifications", "get"): PATIENT_SCOPED_READ,
    ("v1:patient-messages", "post"): {**PATIENT_SCOPED_READ, "patient": 403, "caregiver": 403, "clinician": 201},
    ("v1:patient-reminders", "get"): PATIENT_SCOPED_READ,
    ("v1:patient-reminders", "post"): {**PATIENT_SCOPED_READ, "patient": 201, "caregiver": 403, "clinician": 201},
    ("v1:patient-reminder", "patch"): {**PATIENT_SCOPED_READ, "caregiver": 403},
    ("v1:patient-reminder", "delete"): {**PATIENT_SCOPED_READ, "patient": 204, "caregiver": 403, "clinician": 204},
    ("v1:patient-notification-preferences", "get"): PATIENT_SCOPED_READ,
    ("v1:patient-notification-preferences", "patch"): {**PATIENT_SCOPED_READ, "patient": 403, "caregiver": 403},
}


def discovered_routes() -> set[tuple[str, str]]:
    routes: set[tuple[str, str]] = set()

    def walk(patterns: list[Any], namespace: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                if entry.namespace == "admin":
                    continue
                walk(entry.url_patterns, f"{namespace}{entry.namespace}:" if entry.namespace else namespace)
            elif isinstance(entry, URLPattern):
                view_class = getattr(entry.callback, "view_class", None) or getattr(entry.callback, "cls", None)
                if namespace == "web:" and not (view_class and issubclass(view_class, APIView)):
                    continue  # server-rendered care-team pages: tests/web/test_pages_access.py decides who sees them
                assert view_class is not None and issubclass(view_class, APIView), f"{entry} is not an API view"
                for method in ("get", "post", "put", "patch", "delete"):
                    if hasattr(view_class, method):
                        routes.add((f"{namespace}{entry.name}", method))

    walk(get_resolver().url_patterns, "")
    return routes


def test_every_route_has_an_access_decision() -> None:
    assert discovered_routes() == set(EXPECTED)


_clock = count()


def request_body(name: str, world: World, team_id: int) -> Any:
    # Each call gets its own instant, so repeated calls are never duplicates of each other.
    moment = timezone.now() - timedelta(seconds=90 * next(_clock) + 90)
    ms = int(moment.timestamp() * 1000)
    return {
        "v1:token": {"username": "alice", "password": "correct-horse-battery"},
        "v1:token-refresh": {"refresh": str(RefreshToken.for_user(world.alice.user))},
        "v1:logout": {"refresh": str(RefreshToken.for_user(world.alice.user))},
        "v1:my-consents": {"care_team": team_id},
        "v1:me": {"password": "not-the-password"},
        "v1:my-caregivers": {"username": world.caregiver.username},
        "v1:readings": {"patient": world.alice.pk, "timestamp": moment.isoformat(), "value": 100, "unit": "mg/dL"},
        "v1:treatments": {"patient": world.alice.pk, "timestamp": moment.isoformat(), "kind": "carbs", "carbs_g": 10},
        "v1:patient-fhir-submit-cgm-bundle": {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {
            "resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
            "effectiveDateTime": moment.isoformat(), "valueQuantity": {"value": 100, "unit": "mg/dL", "code": "mg/dL"}}}]},
        "nightscout:ns-entries": [{"type": "sgv", "sgv": 100, "date": ms}],
        "nightscout:ns-entries-sgv": [{"type": "sgv", "sgv": 100, "date": ms}],
        "nightscout:ns-treatments": [{"eventType": "Note", "created_at": moment.isoformat(), "notes": "x"}],
        "nightscout:ns-devicestatus": [{"device": "phone", "created_at": moment.isoformat()}],
        "nightscout:ns-profile": [{"defaultProfile": "Default", "startDate": moment.isoformat()}],
        "v1:my-devices": {"token": f"matrix-token-{ms}", "platform": "android"},
        "v1:my-notification-preferences": {"quiet_start": "22:00", "quiet_end": "07:00"},
        "v1:my-notification-feedback": {"feedback": "helpful"},
        "v1:my-notification-receipt": {"event": "opened"},
        "v1:patient-messages": {"text": "Please call the clinic."},
        "v1:patient-reminders": {"kind": "glucose_check", "local_time": "08:00"},
        "v1:patient-reminder": {"local_time": "09:00"},
        "v1:patient-notification-preferences": {"low_threshold_min": 70, "low_threshold_max": 85},
    }.get(name)


def notification_route_kwargs(name: str, world: World) -> dict[str, int]:
    """URL ids for the notification routes (issue 5): alice's own notification and reminder."""
    from datetime import time

    from notifications.models import Notification, Reminder

    if name in ("v1:my-notification-ack", "v1:my-notification-feedback", "v1:my-notification-receipt"):
        notification = Notification.objects.create(
            patient=world.alice, recipient=world.alice.user, kind="low", title="Glucose alert", send_after=timezone.now()
        )
        return {"notification_id": notification.pk}
    if name == "v1:patient-reminder":
        reminder = Reminder.objects.create(
            patient=world.alice, kind="glucose_check", local_time=time(8), start_date=timezone.now().date(),
            next_fire_at=timezone.now() + timedelta(days=1),
        )
        return {"patient_id": world.alice.pk, "reminder_id": reminder.pk}
    return {}


@pytest.mark.django_db
@pytest.mark.parametrize("route", sorted(EXPECTED), ids=lambda r: f"{r[1].upper()} {r[0]}")
def test_access_matrix(world: World, route: tuple[str, str]) -> None:
    name, method = route
    team_id = world.alice.consents.filter(revoked_at__isnull=True).get().care_team_id
    kwargs: dict[str, int] = {
        "v1:my-consent": {"care_team_id": team_id},
        "v1:my-caregiver": {"caregiver_id": world.caregiver.pk},
    }.get(name, {"patient_id": world.alice.pk} if name.startswith("v1:patient-") else {})
    kwargs = notification_route_kwargs(name, world) or kwargs
    url = reverse(name, kwargs=kwargs)
    failures = []
    for role, expected in EXPECTED[route].items():
        client = world.client(role)
        body = request_body(name, world, team_id)
        if method == "get":
            response = client.get(url)
        else:
            response = getattr(client, method)(url, data=json.dumps(body), content_type="application/json")
        if response.status_code != expected:
            failures.append(f"{role}: expected {expected}, got {response.status_code} {response.content[:200]!r}")
    assert not failures, "\n".join(failures)
