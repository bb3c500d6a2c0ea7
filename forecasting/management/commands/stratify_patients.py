"""python manage.py stratify_patients [--metric euclidean|dtw]: glucotypes for every patient with enough data."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from forecasting import glucotypes


class Command(BaseCommand):
    help = "Stratify all patients with enough data in the last 14 days into glucotypes (Hall 2018); stores model and history."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--metric", choices=["euclidean", "dtw"], default="euclidean",
                            help="euclidean (fast default) or dtw with a Sakoe-Chiba band (slow; downsampled)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")

    def handle(self, *args: Any, **options: Any) -> None:
        with tqdm(desc="patients", unit="patient", disable=options["no_progress"], file=self.stderr) as bar:
            try:
                result = glucotypes.glucotypes_stratify(metric=options["metric"], progress=bar.update)
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
        model = result.model
        sds = ", ".join(f"{n} {sd:.1f}" for n, sd in zip(model.class_names, model.class_mean_sd_mgdl, strict=True))
        self.stdout.write(
            f"Glucotype model {model.pk} ({model.metric}): {result.n_assigned} patients assigned, "
            f"{result.n_skipped} skipped (fewer than {glucotypes.MIN_WINDOWS} complete 2.5-h windows), "
            f"{model.n_windows} windows, fit {model.fit_seconds:.2f} s, total {result.seconds:.2f} s. "
            f"Mean within-window SD per class (mg/dL): {sds}."
        )
