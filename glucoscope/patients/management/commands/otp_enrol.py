"""Operators issue a clinician or staff member an authenticator (TOTP), e.g. for the first admin or a lost phone."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from glucoscope.patients import services
from glucoscope.patients.models import User


class Command(BaseCommand):
    help = "Create a confirmed TOTP authenticator for USERNAME and print its otpauth:// URI and secret once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--replace", action="store_true",
                            help="Delete the user's existing authenticators first (lost or compromised phone).")

    def handle(self, *args: Any, **options: Any) -> None:
        user = User.objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user named {options['username']!r}.")
        try:
            enrolment = services.totp_enrol_by_operator(user=user, replace=options["replace"])
        except services.TotpEnrolmentError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Authenticator for {user.username}; hand over securely, shown only this once:")
        self.stdout.write(f"otpauth_uri={enrolment.otpauth_uri}")
        self.stdout.write(f"secret={enrolment.secret_base32}")
