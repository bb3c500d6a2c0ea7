"""python manage.py personalise_patients [--patient ID ...]: tune patients' own output layers now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from tqdm import tqdm

from forecasting import services


class Command(BaseCommand):
    help = (
        "Tune the active forecaster's output layer on each patient's own readings of the last "
        "PERSONALISATION_HISTORY_DAYS (default 28) and store the outcome; the worker uses a kept layer from the "
        "patient's next forecast. Without --patient: every patient who is due (at least 7 days of readings, not "
        "tuned for the active version within PERSONALISATION_REFRESH_DAYS), what the daily sweep queues."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--patient", type=int, action="append", dest="patients", metavar="ID",
                            help="patient id to tune now, due or not (repeatable)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        patient_ids = options["patients"] or services.patients_due_for_personalisation()
        if not patient_ids:
            self.stdout.write("No patient is due for personalisation.")
            return
        kept = refused = 0
        self.stdout.write("patient | days | held-back loss population -> personal | kept")
        for patient_id in tqdm(patient_ids, desc="patients", disable=options["no_progress"]):
            try:
                row = services.patient_personalise(patient_id=patient_id)
            except services.PersonalisationRefused as reason:
                row, why = None, str(reason)
            else:
                why = "deleted while tuning"
            if row is None:
                refused += 1
                self.stdout.write(f"{patient_id} | skipped: {why}")
                continue
            kept += row.kept
            self.stdout.write(f"{patient_id} | {row.days_of_data:.1f} | {row.population_loss:.4f} -> {row.personal_loss:.4f} | "
                              f"{'yes' if row.kept else 'no (population layer kept)'}")
        self.stdout.write(f"{len(patient_ids)} patients: {kept} personalised, {len(patient_ids) - kept - refused} kept the "
                          f"population layer, {refused} skipped.")
