from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from notifications.tips import tips_sync_from_files


class Command(BaseCommand):
    help = "Load the diet tip library from notifications/tips/*.json into the database (new tips only by default)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--overwrite", action="store_true", help="Files win over edits made in the admin.")

    def handle(self, *args: Any, overwrite: bool = False, **options: Any) -> None:
        count = tips_sync_from_files(overwrite=overwrite)
        self.stdout.write(f"{count} tips {'written' if overwrite else 'added'}")
