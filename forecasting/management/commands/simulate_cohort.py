"""Generate (or reuse) a cached simglucose type 1 cohort for training and evaluation."""

from __future__ import annotations

import os
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from forecasting.ml import simulation

DEFAULT_CACHE_DIR = "var/simglucose"


class Command(BaseCommand):
    help = (
        "Simulate simglucose's 30 virtual type 1 patients (children, adolescents, adults) with randomised "
        "meals and basal-bolus insulin, plus days of simglucose's own published scenario; writes <cache>/simglucose.csv.gz (+ -metadata.csv) in the shared "
        "CSV format with carbs_g,insulin_u. Cached per patient: re-running only simulates what is missing."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help=f"output folder (outside git; default {DEFAULT_CACHE_DIR})")
        parser.add_argument("--days", type=float, default=40.0,
                            help="randomised days per patient (40; 0 with --published-days for the published scenario alone)")
        parser.add_argument(
            "--published-days", type=float, default=20.0,
            help="further days per patient of simglucose's own T1DSimEnv + RandomScenario + BBController, as "
                 "subjects sim-<patient>-published (20; 0 skips them)",
        )
        parser.add_argument(
            "--sensor", default=simulation.SENSOR_NAME, choices=simulation.SENSOR_NAMES,
            help="simglucose sensor of the published days (GuardianRT, every 5 min, as trained on; Dexcom every 3 min)",
        )
        parser.add_argument(
            "--log-basal", action="store_true",
            help="published days: write basal + bolus in insulin_u, as a pump's total delivery (default: bolus only)",
        )
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
        if options["days"] < 0 or options["published_days"] < 0:
            raise CommandError("--days and --published-days must be 0 or more")
        if options["days"] == 0 and options["published_days"] == 0:
            raise CommandError("nothing to simulate: --days and --published-days are both 0")
        robustness_file = options["sensor"] != simulation.SENSOR_NAME or options["log_basal"]
        if robustness_file and options["days"] > 0:
            raise CommandError("--sensor and --log-basal apply to the published days alone: pass --days 0")
        if (robustness_file or options["days"] == 0) and Path(options["cache_dir"]) == Path(DEFAULT_CACHE_DIR):
            raise CommandError(f"this would replace the training cohort in {DEFAULT_CACHE_DIR}: pass --cache-dir")
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
        runs: list[tuple[simulation.Scenario, float]] = [(simulation.RANDOMISED, options["days"])] if options["days"] > 0 else []
        if options["published_days"] > 0:
            runs.append((simulation.PUBLISHED, options["published_days"]))
        paths: dict[tuple[str, str], Path] = {}
        bar = tqdm(total=len(names) * len(runs), desc="simglucose patients", unit="patient")
        for scenario, days in runs:
            # Checked above: with randomised days, sensor and basal logging are the defaults.
            cohort = simulation.iter_cohort(tuple(names), days, options["seed"], cache_dir, jobs=options["jobs"],
                                            scenario=scenario, sensor_name=options["sensor"],
                                            log_basal=options["log_basal"])
            for name, path, cached in cohort:
                paths[scenario, name] = path
                bar.set_postfix_str(f"{name}, {scenario}{' (cached)' if cached else ''}")
                bar.update(1)
        bar.close()
        # In the order asked for, however they finished: the cohort file (and training on it) is reproducible.
        out, meta = simulation.assemble_cohort([paths[scenario, name] for scenario, _ in runs for name in names], cache_dir)
        parts = [f"{days:g} {'randomised days' if scenario == simulation.RANDOMISED else 'days of simglucose published'}"
                 for scenario, days in runs]
        self.stdout.write(f"wrote {out} and {meta} ({len(names)} patients x {' + '.join(parts)})")
