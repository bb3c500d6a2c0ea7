"""Generate (or reuse) a cached simglucose type 1 cohort for training and evaluation."""

from __future__ import annotations

import os
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from forecasting.ml import simulation


class Command(BaseCommand):
    help = (
        "Simulate simglucose's 30 virtual type 1 patients (children, adolescents, adults) with randomised "
        "meals and basal-bolus insulin; writes <cache>/simglucose.csv.gz (+ -metadata.csv) in the shared "
        "CSV format with carbs_g,insulin_u. Cached per patient: re-running only simulates what is missing."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--cache-dir", default="var/simglucose", help="output folder (outside git)")
        parser.add_argument("--days", type=float, default=40.0, help="simulated days per patient (40)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--jobs", type=int, default=os.cpu_count() or 1,
            help="patients simulated at once, one process each (default: the number of CPUs); the files do not depend on it",
        )
        parser.add_argument(
            "--patients",
            default="all",
            help="comma-separated simglucose names (e.g. adult#001,child#003) or 'all'",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["days"] <= 0:
            raise CommandError("--days must be positive")
        if options["jobs"] < 1:
            raise CommandError("--jobs must be at least 1")
        if options["patients"] == "all":
            names = list(simulation.PATIENT_NAMES)
        else:
            names = [n.strip() for n in options["patients"].split(",") if n.strip()]
            unknown = sorted(set(names) - set(simulation.PATIENT_NAMES))
            if unknown:
                raise CommandError(f"--patients: unknown simglucose patients {unknown}")
        try:
            simulation.import_simglucose()
        except ImportError as exc:
            raise CommandError(f"simglucose is not installed ({exc}); pip install simglucose==0.2.11") from exc
        cache_dir = Path(options["cache_dir"])
        cache_dir.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        bar = tqdm(total=len(names), desc="simglucose patients", unit="patient")
        cohort = simulation.iter_cohort(tuple(names), options["days"], options["seed"], cache_dir, jobs=options["jobs"])
        for name, path, cached in cohort:
            paths[name] = path
            bar.set_postfix_str(f"{name}{' (cached)' if cached else ''}")
            bar.update(1)
        bar.close()
        # In the order asked for, however they finished: the cohort file (and training on it) is reproducible.
        out, meta = simulation.assemble_cohort([paths[name] for name in names], names, cache_dir)
        self.stdout.write(f"wrote {out} and {meta} ({len(names)} patients x {options['days']:g} days)")
