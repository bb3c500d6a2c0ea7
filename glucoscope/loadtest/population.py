"""The load test's people, seeded through the same services the product uses, and the reset between runs."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.test.utils import override_settings
from django.utils import timezone

from api.authentication import GlucoScopeRefreshToken
from forecasting.models import Forecast
from glucoscope.patients import services as patient_services
from glucoscope.patients.models import CareTeam, Device, Patient, Role, User, VendorOrganization
from glucoscope.readings.batches import Uploader, reading_batch_ingest
from glucoscope.readings.models import GlucoseReading, PatientOutbox, PatientSummary, ReadingSource

# Patients never sign in with a password during the load (their phones hold JWTs), so their
# seed passwords use a cheap hasher: 500 production hashes would take minutes on 2 cores.
# Production's PASSWORD_HASHERS does not list MD5, so these accounts cannot sign in at all.
FAST_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
HISTORY = timedelta(hours=3)
CGM_STEP = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Phone:
    patient_id: int
    token: str


@dataclass(frozen=True, slots=True)
class Vendor:
    name: str
    key: str
    serials: tuple[str, ...]  # one linked device per patient of this vendor


@dataclass(frozen=True, slots=True)
class Clinician:
    username: str
    password: str
    token: str
    totp_key: bytes  # the confirmed authenticator's secret, for the /care/ second step


@dataclass(frozen=True, slots=True)
class Population:
    phones: tuple[Phone, ...]
    vendors: tuple[Vendor, ...]
    clinicians: tuple[Clinician, ...]
    history_readings: int


def reset_load_data() -> None:
    """Empty what a previous run left: readings, forecasts (and their risks, events, notifications), outbox, summaries."""
    tables = [GlucoseReading._meta.db_table, Forecast._meta.db_table, PatientOutbox._meta.db_table,
              PatientSummary._meta.db_table]
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} CASCADE")


def seed_population(*, patients: int, vendors: int, clinicians: int, care_teams: int) -> Population:
    """Upsert the people (idempotent across runs), link one device per patient to a vendor, grant consents.

    Patient i belongs to vendor i mod `vendors` and consents to care team i mod `care_teams`;
    clinician j works in care team j mod `care_teams`.
    """
    with transaction.atomic():
        usernames = [f"load-patient-{number}" for number in range(patients)]
        # A previous run's patients are reused as they are (one query); only missing ones are created.
        existing = {p.user.username: p for p in Patient.objects.filter(user__username__in=usernames).select_related("user")}
        with override_settings(PASSWORD_HASHERS=FAST_HASHERS):
            people = [
                existing.get(username) or patient_services.patient_upsert(
                    username=username, password=secrets.token_urlsafe(12), time_zone="UTC",
                    diabetes_type="type1", birth_year=1960 + number % 50,
                )
                for number, username in enumerate(usernames)
            ]
        teams = [CareTeam.objects.get_or_create(name=f"Load care team {number}")[0] for number in range(care_teams)]
        for number, patient in enumerate(people):
            patient_services.consent_grant(patient=patient, care_team=teams[number % care_teams])
        vendor_rows = []
        for number in range(vendors):
            organisation, _ = VendorOrganization.objects.get_or_create(name=f"Load vendor {number}")
            patient_services.vendor_api_key_revoke(vendor=organisation, name="loadtest")
            _, key = patient_services.vendor_api_key_create(vendor=organisation, name="loadtest")
            linked = set(Device.objects.filter(vendor=organisation).values_list("serial", "patient_id"))
            serials = tuple(
                f"LOAD-{number}-{patient.pk}" if (f"LOAD-{number}-{patient.pk}", patient.pk) in linked else
                patient_services.device_link(vendor=organisation, serial=f"LOAD-{number}-{patient.pk}", patient=patient).serial
                for patient in people[number::vendors]
            )
            vendor_rows.append((organisation, Vendor(name=organisation.name, key=key, serials=serials)))
        # Clinicians sign in to /care/ through the real login form, so their passwords use the
        # production hasher (0.3–1.3 s each on this machine). The password is derived from
        # SECRET_KEY, so a later run against the same database reuses the stored hash.
        doctors = []
        known = {u.username: u for u in User.objects.filter(username__startswith="load-clinician-", role=Role.CLINICIAN)}
        for number in range(clinicians):
            username = f"load-clinician-{number}"
            password = _clinician_password(username)
            user = known.get(username) or patient_services.user_upsert(username=username, role=Role.CLINICIAN, password=password)
            patient_services.care_team_add_clinician(care_team=teams[number % care_teams], clinician=user)
            doctors.append(Clinician(username=user.username, password=password, token=_access_token(user),
                                     totp_key=_authenticator(user)))
    history = _seed_history(vendor_rows, people, vendors=vendors, now=timezone.now())
    return Population(
        phones=tuple(Phone(patient_id=p.pk, token=_access_token(p.user)) for p in people),
        vendors=tuple(vendor for _, vendor in vendor_rows),
        clinicians=tuple(doctors),
        history_readings=history,
    )


def _clinician_password(username: str) -> str:
    return hmac.new(settings.SECRET_KEY.encode(), f"loadtest:{username}".encode(), hashlib.sha256).hexdigest()[:32]


def _authenticator(user: User) -> bytes:
    """A confirmed TOTP device, issued the way an operator issues one (`manage.py otp_enrol --replace`)."""
    return bytes(patient_services.totp_enrol_by_operator(user=user, replace=True).device.bin_key)


def _access_token(user: User) -> str:
    # The project's own token, stamped with the user's token generation as sign-in would stamp it.
    return str(GlucoScopeRefreshToken.for_user(user).access_token)


def _seed_history(vendor_rows: list[tuple[VendorOrganization, Vendor]], people: list[Patient], *, vendors: int,
                  now: datetime) -> int:
    """Three hours of 5-minute readings per patient, through the vendor ingest path.

    With a history the forecaster really runs for every patient (without one it stores
    "insufficient data" and skips the model), and the after-ingest tasks this enqueues warm
    the workers up before the clock starts.
    """
    steps = int(HISTORY / CGM_STEP)
    stored = 0
    for organisation, vendor in vendor_rows:
        items = [
            {"device": serial, "timestamp": (now - CGM_STEP * (steps - step)).isoformat(),
             "value": 90 + (step * 11 + index * 7) % 120, "unit": "mg/dL", "trend": "Flat"}
            for index, serial in enumerate(vendor.serials)
            for step in range(steps)
        ]
        for start in range(0, len(items), 5_000):
            outcome = reading_batch_ingest(uploader=Uploader(source=ReadingSource.VENDOR, vendor_id=organisation.pk),
                                           items=items[start:start + 5_000])
            if outcome.rejected:
                raise ValueError(f"history seed rejected: {outcome.rejected[:3]}")
            stored += outcome.accepted
    return stored
