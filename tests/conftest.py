"""Shared fixtures: a small world with every role, and API clients authenticated as each of them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest
from django.core.cache import cache
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.http import HttpRequest
from django.test import Client
from django_otp import login as otp_login
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from glucoscope.celery import app as celery_app
from glucoscope.patients import services as patient_services
from glucoscope.patients.models import CaregiverLink, Device, Patient, Role, User, VendorOrganization
from glucoscope.readings.services import outbox_wake_flag_clear
from tests.factories import CareTeamFactory, DeviceFactory, PatientFactory, UserFactory, VendorFactory, consent


def _allow_audit_flush(sender: object, connection: BaseDatabaseWrapper, **kwargs: object) -> None:
    """Transactional tests flush (TRUNCATE) every table between tests, the append-only audit log too.

    The audit trigger (glucoscope/audit/migrations/0002) allows that only in a maintenance session;
    tests/security/test_audit.py turns it off again to prove the trigger refuses the application.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET glucoscope.audit_maintenance = 'on'")


connection_created.connect(_allow_audit_flush)


@pytest.fixture(autouse=True)
def _isolated_cache_and_eager_tasks(request: pytest.FixtureRequest, settings):  # type: ignore[no-untyped-def]
    """Unit tests run tasks in-process and keep throttle counters per test; integration tests use the real broker."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    # Tests run in production mode; the test client speaks plain HTTP.
    settings.SECURE_SSL_REDIRECT = False
    # Production password hashing costs ~0.3 s per user; tests create dozens.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()
    integration = request.node.get_closest_marker("integration") is not None
    previous = celery_app.conf.task_always_eager
    if not integration:
        celery_app.conf.task_always_eager = True
        settings.CELERY_TASK_ALWAYS_EAGER = True
    else:
        # A flag left by an earlier test's queued task would hold back this test's first task.
        outbox_wake_flag_clear()
    yield
    celery_app.conf.task_always_eager = previous


def bearer(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user).access_token}")
    return client


def otp_verified_login(client: Client, user: User) -> TOTPDevice:
    """Signs `user` in on `client` with password-equivalent force_login plus a verified TOTP second factor.

    The second factor is recorded with django_otp.login, exactly what the care-team TOTP step and the
    OTP admin login do after a correct code; MFA itself stays on. Returns the (confirmed) device.
    """
    client.force_login(user)
    device = TOTPDevice.objects.filter(user=user, confirmed=True).first() or TOTPDevice.objects.create(
        user=user, name="test authenticator", confirmed=True
    )
    session = client.session  # a fresh SessionStore bound to the client's cookie; saved below
    request = HttpRequest()
    request.session = session
    request.user = user
    otp_login(request, device)
    session.save()
    return device


def totp_code(device: TOTPDevice, *, steps_ahead: int = 0) -> str:
    """The code an authenticator app shows now (or `steps_ahead` 30-second steps later) for this device."""
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = totp.time + steps_ahead * device.step
    return str(totp.token()).zfill(device.digits)


def api_key_client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    return client


def nightscout_client(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_API_SECRET=hashlib.sha1(secret.encode()).hexdigest())
    return client


@dataclass
class World:
    """Every role the access rules distinguish, around patient `alice`."""

    alice: Patient
    bob: Patient
    caregiver: User
    clinician: User
    other_clinician: User
    revoked_clinician: User
    staff: User
    vendor: VendorOrganization
    vendor_key: str
    alice_device: Device
    other_vendor_key: str
    alice_ns_secret: str
    bob_ns_secret: str

    def client(self, role: str) -> APIClient:
        """An API client for a role name used by the access tests."""
        clients = {
            "anonymous": lambda: APIClient(),
            "patient": lambda: bearer(self.alice.user),
            "other_patient": lambda: bearer(self.bob.user),
            "caregiver": lambda: bearer(self.caregiver),
            "clinician": lambda: bearer(self.clinician),
            "other_clinician": lambda: bearer(self.other_clinician),
            "revoked_clinician": lambda: bearer(self.revoked_clinician),
            "staff": lambda: bearer(self.staff),
            "vendor": lambda: api_key_client(self.vendor_key),
            "other_vendor": lambda: api_key_client(self.other_vendor_key),
            "nightscout": lambda: nightscout_client(self.alice_ns_secret),
        }
        return clients[role]()


@pytest.fixture
def world(db) -> World:  # type: ignore[no-untyped-def]
    alice = PatientFactory(user=UserFactory(username="alice", role=Role.PATIENT))
    bob = PatientFactory(user=UserFactory(username="bob", role=Role.PATIENT))
    caregiver = UserFactory(username="carol", role=Role.CAREGIVER)
    CaregiverLink.objects.create(patient=alice, caregiver=caregiver)
    team, other_team, revoked_team = CareTeamFactory(), CareTeamFactory(), CareTeamFactory()
    clinician = UserFactory(username="dr-dan", role=Role.CLINICIAN)
    other_clinician = UserFactory(username="dr-erin", role=Role.CLINICIAN)
    revoked_clinician = UserFactory(username="dr-frank", role=Role.CLINICIAN)
    patient_services.care_team_add_clinician(care_team=team, clinician=clinician)
    patient_services.care_team_add_clinician(care_team=other_team, clinician=other_clinician)
    patient_services.care_team_add_clinician(care_team=revoked_team, clinician=revoked_clinician)
    consent(alice, team)
    consent(bob, other_team)
    consent(alice, revoked_team)
    patient_services.consent_revoke(patient=alice, care_team=revoked_team)
    vendor, other_vendor = VendorFactory(), VendorFactory()
    _, vendor_key = patient_services.vendor_api_key_create(vendor=vendor, name="test")
    _, other_vendor_key = patient_services.vendor_api_key_create(vendor=other_vendor, name="test")
    alice_device = DeviceFactory(vendor=vendor, patient=alice, serial="ALICE-1")
    DeviceFactory(vendor=other_vendor, patient=bob, serial="BOB-1")
    return World(
        alice=alice, bob=bob, caregiver=caregiver, clinician=clinician, other_clinician=other_clinician,
        revoked_clinician=revoked_clinician, staff=UserFactory(username="sam", role=Role.STAFF, is_staff=True),
        vendor=vendor, vendor_key=vendor_key, alice_device=alice_device, other_vendor_key=other_vendor_key,
        alice_ns_secret=patient_services.nightscout_credential_rotate(patient=alice).secret,
        bob_ns_secret=patient_services.nightscout_credential_rotate(patient=bob).secret,
    )
