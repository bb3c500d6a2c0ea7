"""Per-patient personalisation: fine-tune the output head on a patient's own history.

Only the head is tuned, with few steps and a small learning rate, because a
week of one person's data is small next to the population model; the encoder
stays shared. Patients with less than ``MIN_DAYS`` of data keep the population
model. :func:`personalisation_gain` measures the effect honestly: tune on the
first days, score on the later days only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from forecasting.ml.data import SubjectReadings, build_grid
from forecasting.ml.datasets import SeriesBank, TrainingWindows
from forecasting.ml.evaluation import collect_predictions, point_metrics
from forecasting.ml.inference import Forecaster
from forecasting.ml.networks import pinball_loss
from forecasting.ml.training import validation_loss

MIN_DAYS = 7.0


def data_days(readings: SubjectReadings) -> float:
    """Days covered by real readings (count x 5 min), not calendar span."""
    return len(readings) * 5 / 1440


@dataclass
class FineTuneConfig:
    steps: int = 300
    batch_size: int = 256
    learning_rate: float = 3e-4
    seed: int = 0
    #: The newest part of the patient's data held back to decide whether tuning helps.
    holdout_fraction: float = 0.2
    check_every: int = 25
    #: Keep the tuned head only if it beats the population head by this much.
    min_relative_gain: float = 0.01


def fine_tune(forecaster: Forecaster, readings: SubjectReadings, config: FineTuneConfig | None = None) -> Forecaster:
    """Return a copy of ``forecaster`` whose head is tuned on ``readings``.

    The newest ``holdout_fraction`` of the patient's windows is held back; the
    head is checkpointed on it and kept only if it beats the population head.
    A first run without that guard made most held-out subjects worse, which
    is why it exists. ``tuned.metadata["personalised"]`` says which way it went.

    Raises:
        ValueError: when the patient has less than MIN_DAYS of data.
    """
    config = config or FineTuneConfig()
    if data_days(readings) < MIN_DAYS:
        raise ValueError(f"personalisation needs at least {MIN_DAYS:g} days of data")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    network = copy.deepcopy(forecaster.network).to(forecaster.device)
    bank = SeriesBank(forecaster.config, forecaster.scaler)
    bank.add("p", build_grid(readings))
    bank.finalize()
    origins = bank.training_origins()
    # Hold out the newest windows, leaving a horizon-long gap so targets of the
    # training windows never overlap the held-out period.
    cut = int(origins.shape[0] * (1 - config.holdout_fraction))
    gap = forecaster.config.horizon_steps
    fit = TrainingWindows(bank, origins[: max(cut - gap, 1)])
    check = TrainingWindows(bank, origins[cut:])
    head = network.head
    assert isinstance(head, torch.nn.Module)
    for p in network.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(head.parameters(), lr=config.learning_rate)
    base_loss = validation_loss(network, check, forecaster.device, batch_size=2048)
    best_loss, best_state = base_loss, copy.deepcopy(head.state_dict())
    for step in range(1, config.steps + 1):
        network.train()
        idx = rng.choice(fit.origins, size=min(config.batch_size, len(fit)), replace=False)
        batch = fit.batch(idx, forecaster.device)
        loss = pinball_loss(network(batch.x), batch.y, batch.mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % config.check_every == 0 or step == config.steps:
            network.eval()
            current = validation_loss(network, check, forecaster.device, batch_size=2048)
            if current < best_loss:
                best_loss, best_state = current, copy.deepcopy(head.state_dict())
    personalised = best_loss < base_loss * (1 - config.min_relative_gain)
    if personalised:
        head.load_state_dict(best_state)
    else:
        network = copy.deepcopy(forecaster.network)
    network.eval()
    for p in network.parameters():
        p.requires_grad_(True)
    meta = dict(forecaster.metadata)
    meta["personalised"] = bool(personalised)
    return Forecaster(network, forecaster.config, forecaster.scaler, forecaster.calibrators, meta, forecaster.device)


def _split_at(readings: SubjectReadings, t: int) -> SubjectReadings:
    keep = readings.times < t
    return SubjectReadings(
        readings.subject_id,
        readings.times[keep],
        readings.glucose[keep],
        readings.flags[keep],
        cohort=readings.cohort,
    )


def personalisation_gain(
    forecaster: Forecaster,
    subjects: dict[str, SubjectReadings],
    fit_days: float = MIN_DAYS,
    config: FineTuneConfig | None = None,
) -> list[dict[str, object]]:
    """Tune on each subject's first ``fit_days`` of data, score RMSE on the rest.

    Returns one row per subject with enough data (>= fit_days + 2 days) with
    population and personalised RMSE at 30 and 60 min on the later days.
    """
    rows: list[dict[str, object]] = []
    for key, r in subjects.items():
        if data_days(r) < fit_days + 2:
            continue
        cut_index = int(fit_days * 288)
        cut_time = int(r.times[min(cut_index, len(r) - 1)])
        tuned = fine_tune(forecaster, _split_at(r, cut_time), config)
        row: dict[str, object] = {
            "subject": key,
            "cohort": r.cohort,
            "personalised": tuned.metadata.get("personalised", False),
        }
        for label, model in (("population", forecaster), ("personal", tuned)):
            data = collect_predictions(
                {key: r}, predict_fn=model.predict_bank, config=model.config, scaler=model.scaler
            )
            if "model" not in data.point:
                break  # no evaluation origins at all (e.g. 15-minute Libre history)
            later = data.time >= cut_time
            for h in data.horizons:
                m = point_metrics(data.target[h][later], data.point["model"][h][later])
                row[f"{label}_rmse{h}"] = m.get("rmse", float("nan"))
                row["n_later"] = m.get("n", 0)
        if "n_later" in row:
            rows.append(row)
    return rows
