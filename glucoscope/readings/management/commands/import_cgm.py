"""python manage.py import_cgm FILE --patient ID [--subject S] [--time-zone TZ]"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from glucoscope.patients.models import Patient
from glucoscope.readings.batches import Uploader, reading_batch_ingest
from glucoscope.readings.imports import ImportFormatError, iter_generic_rows, to_aware_iso
from glucoscope.readings.models import ReadingSource


class Command(BaseCommand):
    help = (
        "Import CGM readings from a CSV in the generic format subject_id,timestamp,glucose_mg_dl (gzip allowed), "
        "as used in ../shared/data. Timestamps without an offset are read in the patient's time zone. "
        "Validation and duplicate rules are the API's: re-importing a file stores nothing twice."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path, help="CSV or CSV.GZ file")
        parser.add_argument("--patient", type=int, required=True, help="GlucoScope patient id to import into")
        parser.add_argument("--subject", help="subject_id to import when the file holds several subjects")
        parser.add_argument("--time-zone", help="IANA zone of the file's local timestamps (default: the patient's)")
        parser.add_argument("--batch-size", type=int, default=5000, help="readings per transaction (default 5000)")
        parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        if not path.exists():
            raise CommandError(f"{path} does not exist")
        patient = Patient.objects.filter(pk=options["patient"]).first()
        if patient is None:
            raise CommandError(f"No patient with id {options['patient']}")
        try:
            zone = ZoneInfo(options["time_zone"] or patient.time_zone)
        except ZoneInfoNotFoundError as exc:
            raise CommandError(f"Unknown time zone {options['time_zone']!r}") from exc
        try:
            rows = list(iter_generic_rows(path, subject=options["subject"]))
        except ImportFormatError as exc:
            raise CommandError(str(exc)) from exc
        subjects = sorted({subject for subject, _, _ in rows})
        if len(subjects) > 1:
            shown = ", ".join(subjects[:10]) + (" …" if len(subjects) > 10 else "")
            raise CommandError(f"{path} holds {len(subjects)} subjects ({shown}); choose one with --subject")
        if not rows:
            raise CommandError("No rows to import" + (f" for subject {options['subject']!r}" if options["subject"] else ""))

        items = [{"timestamp": to_aware_iso(ts, zone), "value": value, "unit": "mg/dL"} for _, ts, value in rows]
        uploader = Uploader(source=ReadingSource.IMPORT, patient_id=patient.pk)
        accepted = duplicates = 0
        reasons: Counter[str] = Counter()
        first_rejected: list[str] = []
        size = max(1, options["batch_size"])
        with tqdm(total=len(items), unit="readings", disable=options["no_progress"], file=self.stderr) as bar:
            for start in range(0, len(items), size):
                outcome = reading_batch_ingest(uploader=uploader, items=items[start : start + size])
                accepted += outcome.accepted
                duplicates += outcome.duplicates
                for rejected in outcome.rejected:
                    for field, messages in rejected["errors"].items():
                        reasons[f"{field}: {messages[0]}"] += 1
                    if len(first_rejected) < 5:
                        row_number = start + rejected["index"] + 1
                        first_rejected.append(f"  data row {row_number}: {rejected['errors']}")
                bar.update(min(size, len(items) - start))
        rejected_total = len(items) - accepted - duplicates
        self.stdout.write(
            f"Imported {path.name} into patient {patient.pk}: {len(items)} rows, {accepted} accepted, "
            f"{duplicates} duplicates, {rejected_total} rejected."
        )
        for reason, count in reasons.most_common():
            self.stdout.write(f"  rejected {count}× {reason}")
        if first_rejected:
            self.stdout.write("First rejected rows:\n" + "\n".join(first_rejected))
