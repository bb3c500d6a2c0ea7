"""python manage.py train_forecaster [--data-dir DIR] [--output DIR] [--epochs N] [--device cpu|cuda] ..."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from forecasting.ml.data import TRAINING_COHORTS
from forecasting.ml.mixed_training import MixedTrainingConfig
from forecasting.ml.pipeline import train_and_save
from forecasting.ml.training import TrainingConfig

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "cgm"
DEFAULT_OUTPUT = REPO_ROOT / "forecasting" / "artifacts"
DEFAULT_SIM_DIR = REPO_ROOT / "var" / "simglucose"


class Command(BaseCommand):
    help = (
        "Train the glucose forecaster (patch-GRU, p10/p50/p90 every 5 min to 120 min) on the shared cohorts "
        "(the type 1 cohorts AZT1D, Bris-T1D_Open and T1D-UOM, and the non-diabetic to type 2 cohorts BIGIDEAs, "
        "Colas_2019 and Hall_2018) with a leave-subjects-out split, evaluate it on the held-out "
        "subjects next to persistence and AR2, and save forecaster.pt (state_dict) + forecaster.json. Stage 2, "
        "when the simglucose cohort is cached (--sim-dir), fine-tunes it with carbohydrate/insulin channels on "
        "real + simulated windows."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--data-dir",
            type=Path,
            default=DEFAULT_DATA_DIR,
            help="folder holding <cohort>.csv.gz and <cohort>-metadata.csv (default: ../shared/data/cgm)",
        )
        parser.add_argument(
            "--cohorts",
            default=",".join(TRAINING_COHORTS),
            help="comma-separated cohort file names (without .csv.gz) in --data-dir (default: %(default)s)",
        )
        parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="artifact folder")
        parser.add_argument("--epochs", type=int, default=TrainingConfig.epochs, help="maximum epochs")
        parser.add_argument(
            "--samples-per-epoch",
            type=int,
            default=TrainingConfig.samples_per_epoch,
            help="random training windows drawn per epoch",
        )
        parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="torch device (default cpu)")
        parser.add_argument("--seed", type=int, default=0, help="random seed (split, init, sampling)")
        parser.add_argument(
            "--max-minutes",
            type=float,
            default=TrainingConfig.max_minutes,
            help="stop training after this many minutes and keep the best epoch so far",
        )
        parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
        parser.add_argument(
            "--sim-dir",
            type=Path,
            default=None,
            help=f"run stage 2 on the simulated cohort cached here by `manage.py simulate_cohort` (e.g. "
            f"{DEFAULT_SIM_DIR.relative_to(REPO_ROOT)}); off by default, because the shipped model is the "
            "glucose-only stage 1. A folder without the cohort skips stage 2 with a message",
        )
        parser.add_argument(
            "--warm-start",
            type=Path,
            default=None,
            help="a stage-1 (glucose-only) artifact trained on the same split: skip stage 1 and fine-tune it",
        )
        parser.add_argument("--mixed-epochs", type=int, default=MixedTrainingConfig.epochs, help="stage-2 epochs")
        parser.add_argument(
            "--mixed-samples-per-epoch",
            type=int,
            default=MixedTrainingConfig.samples_per_epoch,
            help="stage-2 windows per epoch (real + simulated)",
        )
        parser.add_argument(
            "--no-treatment-summary",
            action="store_true",
            help="stage 2 without the head's decayed carbohydrate/insulin sums (the v1.1.0 architecture)",
        )
        parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        data_dir: Path = options["data_dir"]
        if not data_dir.is_dir():
            raise CommandError(f"CGM data folder not found: {data_dir}")
        cohorts = tuple(c.strip() for c in options["cohorts"].split(",") if c.strip())
        if not cohorts:
            raise CommandError("--cohorts: name at least one cohort")
        missing = [c for c in cohorts if not (data_dir / f"{c}.csv.gz").is_file()]
        if missing:
            raise CommandError(f"--cohorts: no {', '.join(f'{c}.csv.gz' for c in missing)} in {data_dir}")
        if options["device"] == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise CommandError("--device cuda requested but CUDA is not available")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        config = TrainingConfig(
            epochs=options["epochs"],
            samples_per_epoch=options["samples_per_epoch"],
            seed=options["seed"],
            max_minutes=options["max_minutes"],
            num_threads=options["threads"],
        )
        warm_start = options["warm_start"]
        if warm_start is not None and not warm_start.is_file():
            raise CommandError(f"--warm-start: no artifact at {warm_start}")
        mixed = MixedTrainingConfig(
            epochs=options["mixed_epochs"],
            samples_per_epoch=options["mixed_samples_per_epoch"],
            seed=options["seed"],
            num_threads=options["threads"],
            treatment_summary=not options["no_treatment_summary"],
        )
        try:
            path = train_and_save(
                data_dir,
                options["output"],
                config,
                device=options["device"],
                cohorts=cohorts,
                progress=not options["no_progress"],
                echo=self.stdout.write,
                sim_dir=options["sim_dir"],
                mixed=mixed,
                warm_start=warm_start,
            )
        except (ValueError, FileNotFoundError) as exc:  # e.g. a --warm-start JSON whose weights file is missing
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"Model saved: {path}"))
