"""python manage.py evaluate_personalisation [--data-dir DIR] [--model PATH] [--fit-days 7]"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from forecasting.management.commands.train_forecaster import DEFAULT_DATA_DIR
from forecasting.ml.data import load_cohorts
from forecasting.ml.inference import Forecaster
from forecasting.ml.personalise import FineTuneConfig, personalisation_gain


class Command(BaseCommand):
    help = (
        "Measure per-patient personalisation on the model's held-out test subjects: tune the output layer on each "
        "subject's first --fit-days days, then compare RMSE at 30/60 min on the later days with the population "
        "model."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="shared CGM folder")
        parser.add_argument("--model", type=Path, default=None, help="artifact JSON (default: the shipped model)")
        parser.add_argument("--fit-days", type=float, default=7.0, help="days used for fine-tuning (>= 7)")
        parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps per subject")
        parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")

    def handle(self, *args: Any, **options: Any) -> None:
        import torch

        torch.set_num_threads(options["threads"])
        if not options["data_dir"].is_dir():
            raise CommandError(f"CGM data folder not found: {options['data_dir']}")
        forecaster = Forecaster.load(options["model"])
        test_keys = forecaster.metadata.get("split", {}).get("test", [])
        if not test_keys:
            raise CommandError("the model's metadata lists no held-out test subjects")
        subjects = load_cohorts(options["data_dir"])
        rows = []
        for key in tqdm(test_keys, desc="subjects"):
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
        self.stdout.write(json.dumps(rows, default=float))
