"""python manage.py forecast_csv --input IN.csv[.gz] --output OUT.csv [--horizons 30,60] [--model PATH]"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from forecasting.ml.pipeline import forecast_csv


def parse_horizons(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise CommandError(f"--horizons must be comma-separated minutes, got {text!r}") from exc
    if not values:
        raise CommandError("--horizons is empty")
    return values


class Command(BaseCommand):
    help = (
        "Forecast glucose from every reading of a CSV (subject_id,timestamp,glucose_mg_dl[,carbs_g,insulin_u]; "
        "gzip, unsorted rows, Low/High, gaps and duplicates allowed). Each reading with enough history is an "
        "origin; only data up to it is used. Writes subject_id,timestamp,horizon_min,glucose_mg_dl,p10,p90,"
        "p_below_70 with the timestamp exactly as in the input."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--input", type=Path, required=True, help="input CSV or CSV.GZ")
        parser.add_argument("--output", type=Path, required=True, help="output CSV (.gz to compress)")
        parser.add_argument("--horizons", default="30,60", help="comma-separated minutes (multiples of 5, <=120)")
        parser.add_argument("--model", type=Path, default=None, help="artifact JSON (default: the shipped model)")
        parser.add_argument("--batch-size", type=int, default=8192, help="windows per forward pass")
        parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
        parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        import torch

        torch.set_num_threads(options["threads"])
        if not options["input"].exists():
            raise CommandError(f"{options['input']} does not exist")
        horizons = parse_horizons(options["horizons"])
        bar = tqdm(unit="origin", disable=options["no_progress"])
        try:
            n = forecast_csv(
                options["input"],
                options["output"],
                horizons=horizons,
                model_path=options["model"],
                batch_size=options["batch_size"],
                progress=bar.update,
            )
        except (ValueError, FileNotFoundError) as exc:
            raise CommandError(str(exc)) from exc
        finally:
            bar.close()
        self.stdout.write(self.style.SUCCESS(f"{n} origins x {len(horizons)} horizons written to {options['output']}"))
