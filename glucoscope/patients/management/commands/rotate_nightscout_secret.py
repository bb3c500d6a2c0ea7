"""Give a patient a new Nightscout secret without a gap: the old one keeps working for the grace period."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from glucoscope.patients import services
from glucoscope.patients.models import Patient


class Command(BaseCommand):
    help = "Issue PATIENT_ID a new Nightscout API secret and token (printed once); old ones expire after --grace-hours."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("patient_id", type=int)
        parser.add_argument("--grace-hours", type=float, default=24.0,
                            help="How long the current secret keeps working (default 24; 0 = stop now).")

    def handle(self, *args: Any, **options: Any) -> None:
        grace_hours: float = options["grace_hours"]
        if grace_hours < 0:
            raise CommandError("--grace-hours must be zero or more.")
        patient = Patient.objects.filter(pk=options["patient_id"]).first()
        if patient is None:
            raise CommandError(f"No patient with id {options['patient_id']}.")
        issued = services.nightscout_credential_rotate(patient=patient, grace=timedelta(hours=grace_hours))
        self.stdout.write(f"New Nightscout credentials for patient {patient.pk}; shown only this once:")
        self.stdout.write(f"API_SECRET={issued.secret}")
        self.stdout.write(f"token={issued.token}")
        self.stderr.write(f"The previous secret and token stop working in {grace_hours:g} hours.")
