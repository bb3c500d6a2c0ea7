"""python manage.py load_hall_demo [--team NAME]: the Hall et al. 2018 CGM cohort as demo patients.

Each subject's readings are shifted by whole days so the last one lands in the last 24 hours
(whole days keep every reading's time of day, which the AGP and glucotypes depend on). Patients
are named hall-<subject>, carry the cohort's diagnosis, and consent to the given care team, so
the triage dashboard and `stratify_patients` can be tried on real data. Re-running replaces them.

Data: Hall H, et al. PLoS Biol 2018;16(7):e2005143, as harmonised in ../shared/data (see its README).
"""

from __future__ import annotations

import csv
import gzip
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone
from tqdm import tqdm

from glucoscope.patients.models import CareTeam, CareTeamConsent, DiabetesType, Patient, Role, User
from glucoscope.readings.models import GlucoseReading, ReadingSource, SensorFlag

DIAGNOSIS = {"No diabetes": DiabetesType.NONE, "Prediabetes": DiabetesType.PREDIABETES, "T2D": DiabetesType.TYPE_2}
ERR_MISSING = "Hall_2018 files not found in {path}."


class Command(BaseCommand):
    help = "Load the Hall 2018 CGM cohort (shifted to end now) as demo patients consenting to a care team."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--team", default="Hall 2018 demo clinic")

    def handle(self, *args: Any, **options: Any) -> None:
        folder = settings.SHARED_DATA_DIR / "cgm"
        data, meta = folder / "Hall_2018.csv.gz", folder / "Hall_2018-metadata.csv"
        if not data.exists() or not meta.exists():
            raise CommandError(ERR_MISSING.format(path=folder))
        diagnosis = {r["person_id"]: r["diabetes_type"] for r in csv.DictReader(meta.open())}
        series: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
        with gzip.open(data, "rt") as fh:
            for r in csv.DictReader(fh):
                # The export's timestamps are naive local times; they are kept as UTC wall-clock here.
                series[r["subject_id"]].append((datetime.fromisoformat(r["timestamp"]).replace(tzinfo=UTC), r["glucose_mg_dl"]))
        now = timezone.now()
        team, _ = CareTeam.objects.get_or_create(name=options["team"])
        total = 0
        with transaction.atomic():
            User.objects.filter(username__startswith="hall-").delete()
            for subject in tqdm(sorted(series), desc="subjects", file=self.stderr):
                rows = sorted(series[subject])
                shift = timedelta(days=(now - rows[-1][0]).days)
                user = User.objects.create(username=f"hall-{subject}", role=Role.PATIENT, first_name="Hall", last_name=subject)
                patient = Patient.objects.create(user=user, time_zone="UTC",
                                                 diabetes_type=DIAGNOSIS.get(diagnosis.get(subject, ""), DiabetesType.OTHER))
                CareTeamConsent.objects.create(patient=patient, care_team=team, granted_at=now)
                readings, seen = [], set()
                for moment, raw in rows:
                    t = moment + shift
                    if t in seen:
                        continue
                    seen.add(t)
                    token = raw.strip().lower()
                    flag = SensorFlag.LOW if token == "low" else SensorFlag.HIGH if token == "high" else SensorFlag.NONE
                    value = None if flag else float(raw)
                    if value is not None and not 20 <= value <= 600:
                        continue
                    readings.append(GlucoseReading(patient=patient, measured_at=t, value_mgdl=value, sensor_flag=flag,
                                                   source=ReadingSource.IMPORT, received_at=now))
                GlucoseReading.objects.bulk_create(readings, batch_size=5000)
                total += len(readings)
        self.stdout.write(f"{len(series)} Hall_2018 subjects, {total} readings, consenting to care team {team.name!r} (id {team.pk}).")
