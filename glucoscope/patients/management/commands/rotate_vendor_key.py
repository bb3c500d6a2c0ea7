"""Issue a vendor a new API key without downtime: the old keys keep working for the grace period."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from glucoscope.patients import services
from glucoscope.patients.models import VendorOrganization


class Command(BaseCommand):
    help = "Issue a new API key for VENDOR (name or id), print it once, and expire the old keys after --grace-hours."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("vendor", help="Vendor organisation name or numeric id.")
        parser.add_argument("--grace-hours", type=float, default=24.0,
                            help="How long the vendor's current keys keep working (default 24; 0 = stop now).")

    def handle(self, *args: Any, **options: Any) -> None:
        grace_hours: float = options["grace_hours"]
        if grace_hours < 0:
            raise CommandError("--grace-hours must be zero or more.")
        ref: str = options["vendor"]
        vendor = VendorOrganization.objects.filter(name=ref).first()
        if vendor is None and ref.isdigit():
            vendor = VendorOrganization.objects.filter(pk=int(ref)).first()
        if vendor is None:
            raise CommandError(f"No vendor organisation named or numbered {ref!r}.")
        key, plaintext = services.vendor_api_key_rotate(vendor=vendor, grace=timedelta(hours=grace_hours))
        self.stdout.write(f"New API key for {vendor.name} (prefix {key.prefix}); shown only this once:")
        self.stdout.write(plaintext)
        self.stderr.write(f"The vendor's previous keys stop working in {grace_hours:g} hours.")
