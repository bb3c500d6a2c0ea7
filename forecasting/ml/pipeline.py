"""End-to-end jobs behind the management commands (pure Python, no Django).

Keeping these here means the commands are thin argument parsers and the jobs
can be tested and run without a configured Django project.
"""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forecasting.ml.artifacts import save_artifact
from forecasting.ml.baselines import RidgeLagged
from forecasting.ml.data import (
    TRAINING_COHORTS,
    SubjectReadings,
    age_band,
    diabetes_group,
    load_cohorts,
    read_cgm_csv,
)
from forecasting.ml.datasets import Scaler, WindowConfig, sufficient_history
from forecasting.ml.evaluation import collect_predictions, format_report, summarise
from forecasting.ml.inference import Forecaster
from forecasting.ml.mixed_training import MixedFineTuner, MixedTrainingConfig
from forecasting.ml.networks import PatchGRUForecaster
from forecasting.ml.risk import LogisticCalibrator, calibration_report, event_outcomes, step_cdf
from forecasting.ml.simulation import SIM_COHORT, load_sim_cohort, split_sim_subjects
from forecasting.ml.training import QuantileForecasterTrainer, TrainingConfig, split_subjects

logger = logging.getLogger(__name__)

MODEL_VERSION = "1.4.1"
#: Predicted-low alert: calibrated P(<70 mg/dL within 30 min) at least this.
#: "More likely than not" is fixed a priori, not tuned on test subjects.
ALERT_PROBABILITY = 0.5
ARTIFACT_NAME = "forecaster"


def evaluate_subjects(
    subjects: dict[str, SubjectReadings],
    forecaster: Forecaster | None,
    horizons: tuple[int, ...] = (30, 60),
) -> tuple[list[dict[str, object]], dict[str, Any]]:
    """Metric rows for the model (if any) next to the baselines, and a risk calibration report."""
    ridge = None
    config = WindowConfig()
    scaler = Scaler()
    predict_fn = None
    if forecaster is not None:
        config, scaler = forecaster.config, forecaster.scaler
        predict_fn = forecaster.predict_origin_quantiles
        if forecaster.metadata.get("ridge"):
            ridge = RidgeLagged.from_dict(forecaster.metadata["ridge"])
    alert_fn = None
    if forecaster is not None:
        alert_fn = lambda q: forecaster.risk(q)["p_below_70_30min"] >= ALERT_PROBABILITY  # noqa: E731
    data = collect_predictions(
        subjects,
        predict_fn=predict_fn,
        config=config,
        scaler=scaler,
        ridge=ridge,
        horizons=horizons,
        alert_fn=alert_fn,
    )
    rows = summarise(data)
    # Bias audit by age band and by diabetes type (GUIDE section 8), from the cohort metadata.
    for label in (age_band, diabetes_group):
        groups = {key: label(r.info) for key, r in subjects.items() if r.info}
        if groups:
            rows += [r for r in summarise(data, subject_groups=groups) if r["cohort"] != "all"]
    calibration: dict[str, Any] = {}
    if forecaster is not None:
        bank, grids = forecaster.make_bank(subjects)
        origins = []
        for key, off in bank.offsets.items():
            slots = np.arange(grids[key].n_slots)
            ok = sufficient_history(grids[key].observed, slots)
            origins.append(off + slots[ok])
        o = np.concatenate(origins) if origins else np.zeros(0, dtype=np.int64)
        if o.size:
            q = forecaster.predict_bank(bank, o)
            future, _ = bank.targets(o)
            calibration = calibration_report(forecaster.risk(q), event_outcomes(future))
    return rows, calibration


def format_calibration(report: dict[str, Any]) -> str:
    lines = ["| event | n | base rate | Brier | Brier (base rate only) |", "|---|---|---|---|---|"]
    for name, r in report.items():
        lines.append(f"| {name} | {r['n']} | {r['base_rate']:.4f} | {r['brier']:.4f} | {r['brier_climatology']:.4f} |")
    out = ["\n".join(lines)]
    for name, r in report.items():
        rows = ["", f"Reliability, {name}:", "| bin | count | mean predicted | observed |", "|---|---|---|---|"]
        for b in r["reliability"]:
            if b["count"]:
                rows.append(
                    f"| {b['bin_low']:.1f}-{b['bin_high']:.1f} | {b['count']} | "
                    f"{b['mean_predicted']:.3f} | {b['observed_frequency']:.3f} |"
                )
        out.append("\n".join(rows))
    return "\n".join(out)


def _without_treatments(subjects: dict[str, SubjectReadings], suffix: str) -> dict[str, SubjectReadings]:
    """The same subjects with their carbohydrate/insulin columns removed, under cohort ``<cohort><suffix>``."""
    return {
        key: replace(r, carbs=None, insulin=None, cohort=f"{r.cohort}{suffix}") for key, r in subjects.items()
    }


def train_and_save(
    data_dir: str | Path,
    output_dir: str | Path,
    training: TrainingConfig,
    window: WindowConfig | None = None,
    device: str = "cpu",
    cohorts: tuple[str, ...] = TRAINING_COHORTS,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    sim_dir: str | Path | None = None,
    mixed: MixedTrainingConfig | None = None,
    warm_start: str | Path | None = None,
) -> Path:
    """Train on the shared cohorts with a leave-subjects-out split (+ simulated cohort), evaluate, save.

    Stage 1 trains the glucose-only network on the real cohorts (or, with ``warm_start``, loads a
    stage-1 artifact trained with the same split). Stage 2 runs when the simulated cohort exists in
    ``sim_dir``: it fine-tunes a widened copy on real + simulated windows with the treatment channels
    (see :mod:`forecasting.ml.mixed_training`). Without the cohort the glucose-only model is saved.

    Returns the artifact JSON path. The metrics stored in the JSON are on the held-out test subjects only
    (real, and simulated when stage 2 ran).
    """
    t0 = time.monotonic()
    subjects = load_cohorts(data_dir, cohorts)
    split = split_subjects(subjects, seed=training.seed)
    echo(f"subjects: train {len(split['train'])}, val {len(split['val'])}, test {len(split['test'])}")
    part = {k: {key: subjects[key] for key in v} for k, v in split.items()}
    if warm_start is not None:
        base = Forecaster.load(warm_start, device=device)
        if base.config.use_treatments:
            raise ValueError(f"--warm-start {warm_start} must be a glucose-only (stage 1) model")
        if base.metadata.get("split") != split:
            raise ValueError(f"--warm-start {warm_start} was trained on a different subject split")
        meta: dict[str, Any] = {k: base.metadata[k] for k in (
            "window_config", "scaler", "training_config", "calibration", "history", "best_epoch", "ridge",
            "training_data", "train_seconds", "device") if k in base.metadata}
        meta["warm_start_sha256"] = base.metadata.get("sha256")
        network, stage1_window, scaler = base.network, base.config, base.scaler
        echo(f"stage 1: warm start from {warm_start} (sha256 {str(base.metadata.get('sha256'))[:12]})")
    else:
        trainer = QuantileForecasterTrainer(training, window or WindowConfig(), device=device, progress=progress)
        trainer.fit(part["train"], part["val"])
        echo(f"stage 1 trained in {trainer.train_seconds_ / 60:.1f} min, best epoch {trainer.best_epoch_}")
        meta = trainer.metadata()
        network, stage1_window, scaler = trainer.network_, trainer.window, trainer.scaler_
    sim_part: dict[str, dict[str, SubjectReadings]] = {}
    sim_split: dict[str, list[str]] = {}
    if sim_dir is not None:
        try:
            sim_subjects = load_sim_cohort(sim_dir)
        except FileNotFoundError as exc:
            echo(f"{exc}; skipping stage 2 (the saved model is glucose-only)")
        else:
            sim_split = split_sim_subjects(sorted(sim_subjects), seed=training.seed)
            sim_part = {k: {key: sim_subjects[key] for key in v} for k, v in sim_split.items()}
            echo(f"simulated: train {len(sim_split['train'])}, val {len(sim_split['val'])}, test {len(sim_split['test'])}")
    calibrators = {k: LogisticCalibrator(**v) for k, v in meta.get("calibration", {}).items()}
    final_window = stage1_window
    if sim_part:
        if not isinstance(network, PatchGRUForecaster):
            raise ValueError("stage 2 needs a patch_gru stage-1 network")
        tuner = MixedFineTuner(mixed or MixedTrainingConfig(seed=training.seed), device=device, progress=progress)
        tuner.fit(network, stage1_window, scaler, part["train"], part["val"], sim_part["train"], sim_part["val"])
        echo(f"stage 2 fine-tuned in {tuner.train_seconds_ / 60:.1f} min, best epoch {tuner.best_epoch_}")
        meta.update(tuner.metadata())
        network, final_window = tuner.network_, tuner.window_
        calibrators = tuner.calibrators_ if tuner.calibrators_ is not None else calibrators
    network.to("cpu")
    forecaster = Forecaster(network, final_window, scaler, calibrators, metadata=meta, device="cpu")
    rows, calibration = evaluate_subjects(part["test"], forecaster)
    if sim_part:
        sim_rows, _ = evaluate_subjects(sim_part["test"], forecaster)
        blind_rows, _ = evaluate_subjects(_without_treatments(sim_part["test"], " (CGM only)"), forecaster)
        # Simulated rows, labelled apart from the real ones: all simulated subjects, each scenario (a cohort
        # label of its own; summarise leaves a lone cohort out as equal to "all"), and, as the bias audit,
        # the age groups (with treatments only: CGM-only age rows would carry the same labels).
        for sim_group, suffix in ((sim_rows, ""), (blind_rows, " (CGM only)")):
            for r in sim_group:
                label = str(r["cohort"])
                if label == "all":
                    label = f"{SIM_COHORT}, all scenarios{suffix}"
                elif suffix and not label.endswith(suffix):
                    continue
                elif not label.startswith(SIM_COHORT):
                    label = f"{SIM_COHORT} {label}"
                rows.append({**r, "cohort": label})
    echo(format_report(rows))
    echo(format_calibration(calibration))
    meta.update(
        {
            "version": MODEL_VERSION,
            "split": split,
            "sim_split": sim_split,
            "metrics_held_out": rows,
            "calibration_report": {k: {kk: vv for kk, vv in v.items()} for k, v in calibration.items()},
            "data_dir_files": [f"{c}.csv.gz" for c in cohorts] + ([f"{SIM_COHORT}.csv.gz"] if sim_part else []),
            "total_seconds": round(time.monotonic() - t0, 1),
        }
    )
    path = save_artifact(output_dir, ARTIFACT_NAME, network, "patch_gru", meta)
    echo(f"saved {path}")
    return path


def _open_text(path: Path, mode: str) -> Any:
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", newline="")
    return open(path, mode, newline="")


def forecast_csv(
    input_path: str | Path,
    output_path: str | Path,
    horizons: tuple[int, ...] = (30, 60),
    model_path: str | Path | None = None,
    batch_size: int = 8192,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Forecast from every reading with enough history; write one row per horizon.

    Rows: ``subject_id,timestamp,horizon_min,glucose_mg_dl,p10,p90,p_below_70``
    with the timestamp exactly as written in the input. ``p_below_70`` is the
    probability of going below 70 mg/dL within the horizon (30 or 60 min), or
    at that step for other horizons. Returns the number of origins.
    """
    forecaster = Forecaster.load(model_path)
    H = forecaster.config.horizon_steps
    for h in horizons:
        if h % 5 or not 5 <= h <= 5 * H:
            raise ValueError(f"horizon {h} must be a multiple of 5 between 5 and {5 * H}")
    subjects = read_cgm_csv(input_path, cohort="input")
    bank, grids = forecaster.make_bank(subjects)
    n_total = 0
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    header = ["subject_id", "timestamp", "horizon_min", "glucose_mg_dl", "p10", "p90", "p_below_70"]
    with _open_text(output_path, "w") as fh:
        fh.write(",".join(header) + "\n")
        for key, r in subjects.items():
            grid = grids[key]
            if grid.n_slots == 0:
                continue
            # An exactly repeated row (same subject and timestamp text) is one origin, forecast once.
            candidates = np.arange(len(r))
            if r.raw_timestamps is not None:
                candidates = np.flatnonzero(~pd.Series(r.raw_timestamps).duplicated().to_numpy())
            for start in range(0, candidates.size, batch_size * 4):
                rows = candidates[start : start + batch_size * 4]
                q, ok = forecaster.predict_origins(bank, key, r, grid, rows, batch_size=batch_size)
                q = q[ok]
                if not q.shape[0]:
                    continue
                ts = r.raw_timestamps[rows[ok]] if r.raw_timestamps is not None else rows[ok].astype(str)
                risk = forecaster.risk(q)
                blocks = []
                for h in horizons:
                    k = h // 5 - 1
                    if h in (30, 60):
                        pb = risk[f"p_below_70_{h}min"]
                    else:
                        pb = step_cdf(70.0, q[:, k, 0], q[:, k, 1], q[:, k, 2])
                    blocks.append(
                        pd.DataFrame(
                            {
                                "subject_id": r.subject_id,
                                "timestamp": ts,
                                "horizon_min": h,
                                "glucose_mg_dl": np.round(q[:, k, 1], 1),
                                "p10": np.round(q[:, k, 0], 1),
                                "p90": np.round(q[:, k, 2], 1),
                                "p_below_70": np.round(pb, 4),
                            }
                        )
                    )
                # pandas' C writer is several times faster than csv.writer here.
                pd.concat(blocks).to_csv(fh, header=False, index=False, lineterminator="\n")
                n_total += q.shape[0]
                if progress is not None:
                    progress(q.shape[0])
    return n_total


def evaluate_csv(
    input_path: str | Path, model_path: str | Path | None = None, horizons: tuple[int, ...] = (30, 60)
) -> str:
    """Evaluation report (model vs baselines, per cohort/input) for one CSV."""
    forecaster = Forecaster.load(model_path)
    subjects = read_cgm_csv(input_path)
    rows, calibration = evaluate_subjects(subjects, forecaster, horizons)
    return format_report(rows) + "\n\nRisk calibration\n\n" + format_calibration(calibration)
