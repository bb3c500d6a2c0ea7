"""The audit log of PHI access: coverage of every route, list and batch reads, append-only, admin, access log."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from glucoscope.audit.models import AppendOnlyError, AuditAction, AuditEntry
from glucoscope.patients import services as patient_services
from glucoscope.patients.models import Role
from tests.api.test_access_matrix import EXPECTED, notification_route_kwargs, request_body
from tests.conftest import World, bearer
from tests.factories import PatientFactory, UserFactory
from tests.web.conftest import session_client

# Routes that serve no patient's data, so no entry is expected. A new route is audited unless it
# is added here, on purpose.
NOT_PATIENT_DATA = {
    "healthz", "readyz", "metrics", "schema", "api-docs", "v1:token", "v1:token-refresh", "v1:logout", "v1:revoke-all",
    "nightscout:ns-status", "nightscout:ns-verifyauth",
}
# Roles acting on alice's record in the access matrix (other_* roles act on bob or are refused).
ALICE_SIDE = ("patient", "caregiver", "clinician", "vendor", "nightscout")


def _route_kwargs(name: str, world: World) -> dict[str, int]:
    # The same URL ids as the access matrix uses.
    team_id = world.alice.consents.filter(revoked_at__isnull=True).get().care_team_id
    kwargs: dict[str, int] = {
        "v1:my-consent": {"care_team_id": team_id},
        "v1:my-caregiver": {"caregiver_id": world.caregiver.pk},
    }.get(name, {"patient_id": world.alice.pk} if name.startswith("v1:patient-") else {})
    return notification_route_kwargs(name, world) or kwargs


def _call(client: Any, method: str, url: str, body: Any) -> Any:
    if method == "get":
        return client.get(url)
    return getattr(client, method)(url, data=json.dumps(body), content_type="application/json")


@pytest.mark.django_db
@pytest.mark.parametrize("route", sorted(r for r in EXPECTED if r[0] not in NOT_PATIENT_DATA),
                         ids=lambda r: f"{r[1].upper()} {r[0]}")
def test_every_route_that_serves_a_patients_data_leaves_an_audit_entry(world: World, route: tuple[str, str]) -> None:
    """Walks the route × role matrix: each successful call on alice's data must leave an entry for alice."""
    name, method = route
    # `me/...` routes are about the caller: only the patient's own calls touch alice's record.
    roles = ("patient",) if name in {"v1:me"} or name.startswith("v1:my-") else ALICE_SIDE
    team_id = world.alice.consents.filter(revoked_at__isnull=True).get().care_team_id
    missing = []
    for role in roles:
        if not 200 <= EXPECTED[route].get(role, 404) < 300:
            continue
        url = reverse(name, kwargs=_route_kwargs(name, world))
        last_id = AuditEntry.objects.order_by("-id").values_list("id", flat=True).first() or 0
        response = _call(world.client(role), method, url, request_body(name, world, team_id))
        assert response.status_code < 300, (role, response.status_code, response.content[:300])
        new = list(AuditEntry.objects.filter(patient_id=world.alice.pk, id__gt=last_id))
        if not new:
            missing.append(role)
            continue
        entry = new[0]
        assert entry.route == name and entry.method == method.upper() and entry.status_code == response.status_code
        assert entry.actor_role == {"patient": Role.PATIENT, "caregiver": Role.CAREGIVER, "clinician": Role.CLINICIAN,
                                    "vendor": "vendor", "nightscout": "nightscout"}[role]
        expected_action = {"get": "read", "post": "create", "put": "update", "patch": "update", "delete": "delete"}[method]
        if name in {"v1:patient-export", "v1:my-export"}:
            expected_action = AuditAction.EXPORT
        assert entry.action == expected_action, (role, entry.action)
    assert not missing, f"{method.upper()} {name} served alice's data to {missing} without an audit entry"


@pytest.mark.django_db
def test_care_team_pages_are_audited(world: World, settings: Any) -> None:  # type: ignore[no-untyped-def]
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    client = session_client(world.clinician)
    for name in ("web:patient", "web:recent-chart", "web:agp-svg", "web:agp-pdf"):
        response = client.get(reverse(name, kwargs={"patient_id": world.alice.pk}))
        assert response.status_code == 200, name
        assert AuditEntry.objects.filter(patient_id=world.alice.pk, route=name, actor_user_id=world.clinician.pk,
                                         action="read").count() == 1, name
    client.post(reverse("web:send-message", kwargs={"patient_id": world.alice.pk}), {"text": "Call us"})
    assert AuditEntry.objects.filter(patient_id=world.alice.pk, route="web:send-message", action="create").exists()
    assert client.get(reverse("web:dashboard")).status_code == 200
    assert AuditEntry.objects.filter(patient_id=world.alice.pk, route="web:dashboard", action="read").exists()
    # A patient outside the clinician's teams is a 404 and not an access.
    assert client.get(reverse("web:patient", kwargs={"patient_id": world.bob.pk})).status_code == 404
    assert not AuditEntry.objects.filter(patient_id=world.bob.pk).exists()


@pytest.mark.django_db
def test_a_list_read_records_every_listed_patient_in_one_statement(world: World) -> None:
    team = world.alice.consents.filter(revoked_at__isnull=True).get().care_team
    others = [PatientFactory() for _ in range(3)]
    for patient in others:
        patient_services.consent_grant(patient=patient, care_team=team)
    client = world.client("clinician")
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/api/v1/patients?limit=3")
    assert response.status_code == 200
    listed = {p["id"] for p in response.json()["results"]}
    assert len(listed) == 3
    audited = set(AuditEntry.objects.filter(route="v1:patients").values_list("patient_id", flat=True))
    assert audited == listed  # the page, not patients the caller did not receive
    inserts = [q["sql"] for q in queries if q["sql"].startswith('INSERT INTO "audit_auditentry"')]
    # PostgreSQL gets the page's entries by one COPY, which Django's query log does not record.
    assert len(inserts) == (0 if connection.vendor == "postgresql" else 1)


@pytest.mark.django_db
def test_a_vendor_batch_is_one_entry_per_patient_and_one_insert(world: World) -> None:
    now = timezone.now()
    items = [{"device": "ALICE-1", "timestamp": (now - timedelta(minutes=5 * i)).isoformat(), "value": 100 + i,
              "unit": "mg/dL"} for i in range(200)]
    items.append({"patient": world.bob.pk, "timestamp": now.isoformat(), "value": 100, "unit": "mg/dL"})  # not linked
    with CaptureQueriesContext(connection) as queries:
        response = world.client("vendor").post("/api/v1/readings", items, format="json")
    assert response.status_code == 200 and response.json()["accepted"] == 200
    entries = list(AuditEntry.objects.all())
    assert [(e.patient_id, e.action, e.actor_kind) for e in entries] == [(world.alice.pk, "create", "vendor")]
    assert entries[0].actor_label == f"vendor:{world.vendor.name}" and entries[0].actor_user_id is None
    assert sum(q["sql"].startswith('INSERT INTO "audit_auditentry"') for q in queries) == 1
    # The rejected item named bob: the vendor wrote nothing for him, so nothing about him is recorded.
    assert not AuditEntry.objects.filter(patient_id=world.bob.pk).exists()


@pytest.mark.django_db
def test_entries_keep_the_address_and_never_the_query_string(world: World, settings: Any) -> None:  # type: ignore[no-untyped-def]
    client = world.client("clinician")
    url = f"/api/v1/patients/{world.alice.pk}/summary"
    client.get(url + "?unit=mmol/L", REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_FOR="6.6.6.6", HTTP_X_REQUEST_ID="req-abc-12345")
    entry = AuditEntry.objects.get()
    # No trusted proxy configured: the client-supplied X-Forwarded-For is ignored.
    assert (entry.ip, entry.path, entry.request_id) == ("10.1.2.3", url, "req-abc-12345")
    settings.TRUSTED_PROXY_COUNT = 1
    client.get(url, REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.9")
    assert AuditEntry.objects.order_by("-id").first().ip == "203.0.113.9"  # type: ignore[union-attr]
    # A Nightscout token in the query string is a credential: the path is kept, the query never.
    secret_token = "glucoscope-deadbeefdeadbeef"
    world.client("nightscout").get(f"/nightscout/api/v1/entries.json?token={secret_token}&count=1")
    assert not AuditEntry.objects.filter(path__contains="token").exists()


@pytest.mark.django_db
def test_refused_requests_leave_no_entry(world: World) -> None:
    assert world.client("other_clinician").get(f"/api/v1/patients/{world.alice.pk}/readings").status_code == 404
    assert world.client("anonymous").get(f"/api/v1/patients/{world.alice.pk}/readings").status_code == 401
    assert not AuditEntry.objects.exists()


@pytest.mark.django_db
def test_the_model_refuses_to_change_or_delete_entries(world: World) -> None:
    world.client("patient").get("/api/v1/me")
    entry = AuditEntry.objects.get()
    entry.action = "delete"
    with pytest.raises(AppendOnlyError):
        entry.save()
    with pytest.raises(AppendOnlyError):
        entry.delete()
    with pytest.raises(AppendOnlyError):
        AuditEntry.objects.filter(pk=entry.pk).update(action="delete")
    with pytest.raises(AppendOnlyError):
        AuditEntry.objects.all().delete()
    assert AuditEntry.objects.get().action == "read"


@pytest.fixture
def postgres() -> None:
    if not settings.DATABASE_IS_POSTGRES:
        from tests.integration.conftest import _unavailable

        _unavailable("DATABASE_URL is not PostgreSQL (the append-only trigger is PostgreSQL only)")


@pytest.mark.django_db
@pytest.mark.parametrize("statement", [
    "UPDATE audit_auditentry SET action = 'delete'",
    "DELETE FROM audit_auditentry",
    "TRUNCATE audit_auditentry",
])
def test_postgres_refuses_update_delete_and_truncate(postgres: None, world: World, statement: str) -> None:
    world.client("patient").get("/api/v1/me")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        # The test runner's maintenance switch (tests/conftest.py) is off for this transaction, as in production.
        cursor.execute("SET LOCAL glucoscope.audit_maintenance = 'off'")
        cursor.execute(statement)
    assert AuditEntry.objects.get().action == "read"


@pytest.mark.django_db
def test_staff_read_the_log_in_the_admin_and_cannot_change_it(world: World, settings: Any) -> None:  # type: ignore[no-untyped-def]
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    world.client("clinician").get(f"/api/v1/patients/{world.alice.pk}/readings")
    world.client("other_clinician").get(f"/api/v1/patients/{world.bob.pk}/readings")
    admin_user = UserFactory(username="auditor", role=Role.STAFF, is_staff=True, is_superuser=True)
    client = session_client(admin_user)
    base = "/admin/audit/auditentry/"
    page = client.get(base, {"patient_id": world.alice.pk, "action": "read"})
    assert page.status_code == 200
    assert world.clinician.username in page.content.decode()
    assert world.other_clinician.username not in page.content.decode()
    by_actor = client.get(base, {"actor_user_id": world.other_clinician.pk})
    assert by_actor.status_code == 200 and world.other_clinician.username in by_actor.content.decode()
    assert client.get(base, {"at__gte": (timezone.now() - timedelta(days=1)).isoformat()}).status_code == 200
    entry = AuditEntry.objects.first()
    assert entry is not None
    assert client.get(f"{base}add/").status_code == 403
    assert client.post(f"{base}{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.post(f"{base}{entry.pk}/change/", {"action": "delete"}).status_code == 403
    assert AuditEntry.objects.count() == 2


@pytest.mark.django_db
def test_a_patient_sees_who_accessed_their_data_newest_first(world: World) -> None:
    world.client("clinician").get(f"/api/v1/patients/{world.alice.pk}/readings", REMOTE_ADDR="10.9.9.9")
    world.client("caregiver").get(f"/api/v1/patients/{world.alice.pk}/summary", REMOTE_ADDR="10.8.8.8")
    world.client("other_clinician").get(f"/api/v1/patients/{world.bob.pk}/readings")
    world.client("patient").get("/api/v1/me", REMOTE_ADDR="192.0.2.7")
    page = world.client("patient").get("/api/v1/me/access-log?page_size=2")
    assert page.status_code == 200
    body = page.json()
    assert [(e["actor"], e["action"], e["endpoint"]) for e in body["results"]] == [
        ("alice", "read", "v1:me"), ("carol", "read", "v1:patient-summary"),
    ]
    assert body["results"][0]["ip"] == "192.0.2.7" and body["results"][0]["is_you"] is True
    assert body["results"][1]["ip"] is None  # another person's address is not shown to the patient
    rest = bearer(world.alice.user).get(body["next"]).json()
    assert [(e["actor"], e["actor_role"]) for e in rest["results"]][:1] == [("dr-dan", "clinician")]
    everything = json.dumps(body) + json.dumps(rest)
    assert "dr-erin" not in everything  # bob's access log is bob's
    # The time range filters: nothing before the entries existed.
    earlier = (timezone.now() - timedelta(days=2)).isoformat()
    old = world.client("patient").get("/api/v1/me/access-log", {"start": earlier, "end": (timezone.now() - timedelta(days=1)).isoformat()})
    assert old.status_code == 200 and old.json()["results"] == []
    bad = world.client("patient").get("/api/v1/me/access-log", {"start": "yesterday"})
    assert bad.status_code == 400 and "start" in bad.json()
    assert world.client("clinician").get("/api/v1/me/access-log").status_code == 403


@pytest.mark.django_db
def test_staff_opening_a_patients_records_in_the_admin_is_audited(world: World, settings: Any) -> None:  # type: ignore[no-untyped-def]
    from notifications.models import Notification

    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    notification = Notification.objects.create(patient=world.alice, recipient=world.alice.user, kind="low",
                                               title="Glucose alert", send_after=timezone.now())
    admin_user = UserFactory(username="auditor", role=Role.STAFF, is_staff=True, is_superuser=True)
    client = session_client(admin_user)
    pages = {
        "admin:patients_patient_change": f"/admin/patients/patient/{world.alice.pk}/change/",
        "admin:patients_user_change": f"/admin/patients/user/{world.alice.user.pk}/change/",
        "admin:notifications_notification_change": f"/admin/notifications/notification/{notification.pk}/change/",
    }
    for route, url in pages.items():
        assert client.get(url).status_code == 200, url
        entry = AuditEntry.objects.get(route=route)
        assert (entry.patient_id, entry.action, entry.actor_user_id) == (world.alice.pk, "read", admin_user.pk)
    # A clinician's user page is about nobody's health data.
    assert client.get(f"/admin/patients/user/{world.clinician.pk}/change/").status_code == 200
    assert AuditEntry.objects.count() == len(pages)


@pytest.mark.django_db
@pytest.mark.parametrize("surface", ["api", "care"])
def test_an_audit_write_the_database_cannot_take_answers_503_and_serves_no_data(
    postgres: None, world: World, surface: str,
) -> None:
    """The database can fail between the view and the audit INSERT (it did, mid-restart, in the
    fault test). A real lock makes the INSERT time out here: the caller gets a 503 with
    Retry-After (JSON on the API, plain text on the care pages), not Django's HTML 500, and not
    the unaudited data."""
    import psycopg

    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '200ms'")  # session-level, undone by the test's rollback
    params = connection.settings_dict
    with psycopg.connect(dbname=params["NAME"], host=params["HOST"], port=params["PORT"] or None,
                         user=params["USER"], password=params["PASSWORD"] or None) as locker:
        locker.execute("LOCK TABLE audit_auditentry IN ACCESS EXCLUSIVE MODE")
        client = world.client("clinician") if surface == "api" else session_client(world.clinician)  # type: ignore[arg-type]
        client.raise_request_exception = False  # answer as the server does, not re-raise into the test
        path = f"/api/v1/patients/{world.alice.pk}/readings" if surface == "api" else f"/care/patients/{world.alice.pk}/"
        response = client.get(path)
    assert response.status_code == 503, response.content[:300]
    assert response["Retry-After"] == "5"
    if surface == "api":
        assert response["Content-Type"] == "application/json"
        assert response.json() == {"detail": "The service is temporarily unavailable; retry shortly."}
    else:
        assert response["Content-Type"].startswith("text/plain")
        assert response.content.decode() == "The service is temporarily unavailable; retry shortly."
