"""python manage.py evaluate_personalisation [--data-dir DIR | --input FILE] [--model PATH] [--fit-days 7]"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from forecasting.management.commands.train_forecaster import DEFAULT_DATA_DIR
from forecasting.ml.data import load_cohorts, read_cgm_csv
from forecasting.ml.inference import Forecaster
from forecasting.ml.personalise import MIN_DAYS, FineTuneConfig, personalisation_gain


class Command(BaseCommand):
    help = (
        "Measure per-patient personalisation on the model's held-out test subjects: tune the output layer on each "
        "subject's first --fit-days days, then compare RMSE at 30/60 min on the later days with the population "
        "model. With --input, every subject of that file (the shared CSV format) instead of the test subjects."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="shared CGM folder")
        parser.add_argument("--input", type=Path, default=None,
                            help="CSV(.gz) in the shared format: evaluate all its subjects instead of the model's test subjects")
        parser.add_argument("--model", type=Path, default=None, help="artifact JSON (default: the shipped model)")
        parser.add_argument("--fit-days", type=float, default=7.0, help="days used for fine-tuning (>= 7)")
        parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps per subject")
        parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")

    def handle(self, *args: Any, **options: Any) -> None:
        import torch

        torch.set_num_threads(options["threads"])
        if options["fit_days"] < MIN_DAYS:
            raise CommandError(f"--fit-days must be at least {MIN_DAYS:g}: personalisation needs that much data")
        forecaster = Forecaster.load(options["model"])
        if options["input"] is not None:
            if not options["input"].is_file():
                raise CommandError(f"--input: no such file: {options['input']}")
            try:
                subjects = read_cgm_csv(options["input"])
            except ValueError as exc:
                raise CommandError(f"--input: {exc}") from exc
            keys = list(subjects)
        else:
            if not options["data_dir"].is_dir():
                raise CommandError(f"CGM data folder not found: {options['data_dir']}")
            keys = forecaster.metadata.get("split", {}).get("test", [])
            if not keys:
                raise CommandError("the model's metadata lists no held-out test subjects")
            subjects = load_cohorts(options["data_dir"])
        rows = []
        for key in tqdm(keys, desc="subjects"):
            if key in subjects:
                rows += personalisation_gain(
                    forecaster,
                    {key: subjects[key]},
                    fit_days=options["fit_days"],
                    config=FineTuneConfig(steps=options["steps"]),
                )
        self.stdout.write(
            "| subject | own layer kept | n later | RMSE30 pop | RMSE30 personal | RMSE60 pop | RMSE60 personal |"
        )
        self.stdout.write("|---|---|---|---|---|---|---|")
        for r in rows:
            self.stdout.write(
                f"| {r['subject']} | {'yes' if r['personalised'] else 'no'} | {r['n_later']} | {r['population_rmse30']:.1f} | {r['personal_rmse30']:.1f} | "
                f"{r['population_rmse60']:.1f} | {r['personal_rmse60']:.1f} |"
            )
        if rows:
            mean = {k: float(np.mean([float(r[k]) for r in rows])) for k in
                    ("population_rmse30", "personal_rmse30", "population_rmse60", "personal_rmse60")}
            kept = sum(bool(r["personalised"]) for r in rows)
            self.stdout.write(
                f"| **mean of {len(rows)} subjects** | {kept} of {len(rows)} | | {mean['population_rmse30']:.1f} | "
                f"{mean['personal_rmse30']:.1f} | {mean['population_rmse60']:.1f} | {mean['personal_rmse60']:.1f} |"
            )
        else:
            self.stdout.write(f"No subject has the {options['fit_days']:g} + 2 days of data this needs.")
        self.stdout.write(json.dumps(rows, default=float))
