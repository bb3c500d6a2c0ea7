"""python manage.py seed_demo [--json]: a clinic, a clinician, three patients, a vendor. Safe to run again."""

from __future__ import annotations

import json
import math
import random
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from glucoscope.patients import services as patient_services
from glucoscope.patients.models import CareTeam, Patient, Role, VendorOrganization
from glucoscope.readings.batches import Uploader, reading_batch_ingest
from glucoscope.readings.imports import iter_generic_rows
from glucoscope.readings.models import GlucoseReading, ReadingSource

DEMO_PATIENTS = [
    {"username": "demo-patient-1", "first_name": "Ada", "time_zone": "Europe/London", "diabetes_type": "type1", "birth_year": 1988},
    {"username": "demo-patient-2", "first_name": "Bo", "time_zone": "America/New_York", "diabetes_type": "type1", "birth_year": 2004},
    {"username": "demo-patient-3", "first_name": "Chidi", "time_zone": "Australia/Sydney", "diabetes_type": "type2", "birth_year": 1961},
]
DEMO_FILE = "AZT1D.csv.gz"
DEMO_DAYS = 7


def _password() -> str:
    return secrets.token_urlsafe(12)


def _real_subjects() -> list[list[tuple[datetime, str]]]:
    """Real type 1 subjects (CC BY 4.0, AZT1D), longest record first; empty without ../shared/data."""
    path = Path(settings.SHARED_DATA_DIR) / "cgm" / DEMO_FILE
    if not path.exists():
        return []
    by_subject: dict[str, list[tuple[datetime, str]]] = {}
    for subject, stamp, value in iter_generic_rows(path):
        try:
            by_subject.setdefault(subject, []).append((datetime.fromisoformat(stamp), value))
        except ValueError:
            continue
    return [sorted(rows) for rows in sorted(by_subject.values(), key=len, reverse=True)]


def _real_week(rows: list[tuple[datetime, str]], zone: ZoneInfo, now: datetime) -> list[dict[str, Any]]:
    """The subject's last week, moved by whole days to end now (time-of-day patterns kept)."""
    last_local = rows[-1][0]
    now_local = now.astimezone(zone).replace(tzinfo=None)
    shift = timedelta(days=(now_local.date() - last_local.date()).days)
    window_start = last_local - timedelta(days=DEMO_DAYS)
    return [
        {"timestamp": (stamp + shift).replace(tzinfo=zone).isoformat(), "value": value, "unit": "mg/dL"}
        for stamp, value in rows
        if stamp > window_start and stamp + shift <= now_local
    ]


def _simulated_week(seed: int, now: datetime) -> list[dict[str, Any]]:
    """A plausible type 1 week for machines without ../shared/data: meals, a night dip, sensor noise."""
    rng = random.Random(seed)
    items = []
    moment = now - timedelta(days=DEMO_DAYS)
    drift = 0.0
    while moment <= now:
        hour = moment.hour + moment.minute / 60
        meals = sum(70 * math.exp(-((hour - meal) % 24) / 1.5) * (((hour - meal) % 24) < 4) for meal in (7.5, 12.5, 19))
        drift = 0.95 * drift + rng.gauss(0, 4)
        value = 125 + meals - 25 * math.exp(-((hour - 3.5) ** 2) / 2) + drift
        items.append({"timestamp": moment.isoformat(), "value": round(min(max(value, 45), 380)), "unit": "mg/dL"})
        moment += timedelta(minutes=5)
    return items


class Command(BaseCommand):
    help = (
        "Create demo data: a clinic with a clinician, three consenting patients (two with a week of readings, "
        "from ../shared/data when present, else simulated), a vendor with an API key and a device per patient, "
        "and a Nightscout secret per patient. Passwords, the key and the secrets are new on every run."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the logins as JSON on stdout")

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        clinic, _ = CareTeam.objects.get_or_create(name="Demo Diabetes Clinic")
        clinician_password = _password()
        clinician = patient_services.user_upsert(
            username="demo-clinician", role=Role.CLINICIAN, password=clinician_password, first_name="Dr", last_name="Demo"
        )
        patient_services.care_team_add_clinician(care_team=clinic, clinician=clinician)
        vendor, _ = VendorOrganization.objects.get_or_create(name="Demo CGM Vendor")
        patient_services.vendor_api_key_revoke(vendor=vendor, name="demo")
        _, api_key = patient_services.vendor_api_key_create(vendor=vendor, name="demo")

        patients_out = []
        real_subjects: list[list[tuple[datetime, str]]] | None = None  # read on first need, once
        for number, spec in enumerate(DEMO_PATIENTS):
            password = _password()
            patient: Patient = patient_services.patient_upsert(password=password, preferred_unit="mg/dL", **spec)  # type: ignore[arg-type]
            patient_services.consent_grant(patient=patient, care_team=clinic)
            serial = f"DEMO-CGM-{number + 1:03d}"
            patient_services.device_link(vendor=vendor, serial=serial, patient=patient, model_name="Demo G7")
            nightscout = patient_services.nightscout_credential_rotate(patient=patient)
            if number < 2 and not GlucoseReading.objects.filter(patient=patient).exists():
                if real_subjects is None:
                    real_subjects = _real_subjects()
                items = (
                    _real_week(real_subjects[number], ZoneInfo(patient.time_zone), now)
                    if number < len(real_subjects) else []
                ) or _simulated_week(number, now)
                outcome = reading_batch_ingest(uploader=Uploader(source=ReadingSource.IMPORT, patient_id=patient.pk), items=items)
                self.stderr.write(f"{spec['username']}: {outcome.accepted} readings seeded")
            patients_out.append({
                "id": patient.pk, "username": spec["username"], "password": password,
                "nightscout_secret": nightscout.secret, "device_serial": serial,
            })

        result = {
            "clinician": {"username": clinician.username, "password": clinician_password},
            "patients": patients_out,
            "vendor": {"api_key": api_key},
        }
        if options["json"]:
            self.stdout.write(json.dumps(result, indent=2))
            return
        self.stdout.write(f"Clinician: {clinician.username} / {clinician_password}")
        for patient_row in patients_out:
            self.stdout.write(
                f"Patient {patient_row['id']}: {patient_row['username']} / {patient_row['password']}; "
                f"Nightscout secret {patient_row['nightscout_secret']}; device {patient_row['device_serial']}"
            )
        self.stdout.write(f"Vendor API key (shown once): {api_key}")
