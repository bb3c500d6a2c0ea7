"""python manage.py evaluate_forecaster --input IN.csv[.gz] [--model PATH] [--horizons 30,60]"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from forecasting.management.commands.forecast_csv import parse_horizons
from forecasting.ml.pipeline import evaluate_csv


class Command(BaseCommand):
    help = (
        "Evaluate the forecaster on a CSV with the GUIDE section 8 protocol: origins with a reading at t-5 and a "
        "target at t+h (+/-2.5 min), strictly causal. Prints RMSE, MAE, MARD, Clarke and Parkes A+B, hypo "
        "detection at 30 min, 80%% interval coverage, next to persistence, linear, ridge and AR2 on the same "
        "origins, plus a Brier/reliability report for the risk probabilities."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--input", type=Path, required=True, help="CSV or CSV.GZ in the shared format")
        parser.add_argument("--model", type=Path, default=None, help="artifact JSON (default: the shipped model)")
        parser.add_argument("--horizons", default="30,60", help="comma-separated minutes (default 30,60)")
        parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")

    def handle(self, *args: Any, **options: Any) -> None:
        import torch

        torch.set_num_threads(options["threads"])
        if not options["input"].exists():
            raise CommandError(f"{options['input']} does not exist")
        report = evaluate_csv(options["input"], options["model"], parse_horizons(options["horizons"]))
        self.stdout.write(report)
