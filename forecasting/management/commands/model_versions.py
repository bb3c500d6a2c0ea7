"""python manage.py model_versions list|register PATH|activate VERSION|rollback"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from forecasting import services
from forecasting.models import ModelVersion


class Command(BaseCommand):
    help = "Manage the forecaster registry: list versions, register an artifact, activate a version, roll back."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="registered versions, the active one marked")
        register = sub.add_parser("register", help="register an artifact JSON (weights .pt beside it)")
        register.add_argument("path")
        register.add_argument("--activate", action="store_true", help="make it the active version at once")
        activate = sub.add_parser("activate", help="make VERSION the active model (atomic)")
        activate.add_argument("version")
        sub.add_parser("rollback", help="re-activate the previously active version (atomic)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["action"] == "register":
                version = services.model_version_register(artifact_path=options["path"])
                self.stdout.write(f"Registered {version.name} {version.version} (sha256 {version.checksum[:12]}…)")
                if options["activate"]:
                    services.model_version_activate(name=version.name, version=version.version)
                    self.stdout.write(f"Activated {version.version}")
            elif options["action"] == "activate":
                version = services.model_version_activate(version=options["version"])
                self.stdout.write(f"Activated {version.version}")
            elif options["action"] == "rollback":
                version = services.model_version_rollback()
                self.stdout.write(f"Rolled back to {version.version}")
        except (ValueError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        for version in ModelVersion.objects.order_by("name", "-created_at"):
            self.stdout.write(f"{'*' if version.is_active else ' '} {version.name} {version.version} "
                              f"sha256:{version.checksum[:12]} created {version.created_at:%Y-%m-%d %H:%M}")
