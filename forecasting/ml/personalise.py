"""Per-patient personalisation: re-fit the network's output layer on a patient's own history.

Only the last layer of the head is tuned (``PatchGRUForecaster.output_layer``, about 9 k numbers),
because a week of one person's data is small next to the population model. It is also what makes
serving cheap: the shared network runs once for the whole batch and each personalised row gets its
own layer in one batched product (``networks.RowOutputLayers``), and a patient's layer is 37 kB.
Since everything before that layer is frozen, its inputs are computed once per window and the tuning
is a small linear problem under the pinball loss: a fraction of a second per patient on a CPU.

Layers are tuned from glucose alone, for glucose-only forecasts. Why: whether carbohydrate and insulin
are "known" is decided per forecast (a log in the last 24 h), while a layer is tuned on weeks of data in
which a patient logs on some days and not on others; tuned with treatments, the layer would learn from
days where "nothing logged" read as "ate nothing". The worker therefore uses a patient's layer only for
forecasts without treatment data.

Patients with less than ``MIN_DAYS`` of data keep the population model. The newest part of the
patient's data is held back: its first half picks the best checkpoint, and the tuned layer is kept
only when it beats the population layer on the second half (an earlier version without that guard
made most held-out subjects worse; one half for both choices would favour keeping).
:func:`personalisation_gain` measures the effect honestly: tune on the first days, score on the
later days only.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from forecasting.ml.data import SubjectReadings, build_grid
from forecasting.ml.datasets import SeriesBank, TrainingWindows
from forecasting.ml.evaluation import collect_predictions, point_metrics
from forecasting.ml.inference import Forecaster
from forecasting.ml.networks import PatchGRUForecaster, PersonalOutputLayer, pinball_loss

MIN_DAYS = 7.0
#: Readings in MIN_DAYS of 5-minute data: the one count both the tuning and the daily sweep go by.
MIN_READINGS = int(MIN_DAYS * 1440 / 5)
#: Fewer windows than this to tune on, or to check on, and tuning is refused rather than trusted.
MIN_FIT_WINDOWS, MIN_CHECK_WINDOWS = 1000, 200


def data_days(readings: SubjectReadings) -> float:
    """Days covered by real readings (count x 5 min), not calendar span."""
    return len(readings) * 5 / 1440


@dataclass(frozen=True)
class FineTuneResult:
    """What tuning found: the layer to use (None: keep the population layer) and the held-back losses.

    Losses are the mean pinball loss (normalised scale) on the half of the held-back windows that decides
    whether the layer is kept; ``check_windows`` counts both halves.
    """

    layer: PersonalOutputLayer | None
    population_loss: float
    personal_loss: float
    fit_windows: int
    check_windows: int
    days: float

    @property
    def kept(self) -> bool:
        return self.layer is not None

    @property
    def relative_gain(self) -> float:
        """Share of the population layer's held-back loss that the tuned layer removes."""
        return 1.0 - self.personal_loss / self.population_loss if self.population_loss > 0 else 0.0


@dataclass
class FineTuneConfig:
    steps: int = 300
    batch_size: int = 256
    learning_rate: float = 1e-3
    seed: int = 0
    #: The newest part of the patient's windows held back: its first half picks the checkpoint, its
    #: second half decides whether the tuned layer is kept.
    holdout_fraction: float = 0.2
    check_every: int = 25
    #: Keep the tuned layer only if it beats the population layer by this much.
    min_relative_gain: float = 0.01


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the process's setting.

    Why: the tuning steps are tiny matrix products, where handing work between threads costs more than
    the work. On 2 busy cores one tuning took 2.6 s with 2 threads and 0.5 s with 1.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _network(forecaster: Forecaster) -> PatchGRUForecaster:
    network = forecaster.network
    if not isinstance(network, PatchGRUForecaster):
        raise TypeError(f"personalisation needs a PatchGRUForecaster, not {type(network).__name__}")
    return network


def fine_tune(forecaster: Forecaster, readings: SubjectReadings, config: FineTuneConfig | None = None) -> FineTuneResult:
    """Tune a copy of the output layer on ``readings`` (glucose only); the forecaster itself is left unchanged.

    The newest ``holdout_fraction`` of the patient's windows is held back, after a gap of one horizon
    so no training target falls in it. The first half of it picks the best checkpoint; the layer is
    kept only if it beats the population layer on the second half by ``min_relative_gain``.

    Raises:
        ValueError: when the patient has less than MIN_DAYS of readings, or too few usable windows.
    """
    config = config or FineTuneConfig()
    days = data_days(readings)
    if len(readings) < MIN_READINGS:
        raise ValueError(f"personalisation needs at least {MIN_DAYS:g} days of readings, this patient has {days:.1f}")
    with _one_torch_thread():
        return _fine_tune(forecaster, glucose_only(readings), config, days)


def glucose_only(readings: SubjectReadings, before: int | None = None) -> SubjectReadings:
    """The readings (those before time ``before``, if given) without carbohydrate and insulin: the input
    personal layers are tuned and used on."""
    keep = slice(None) if before is None else readings.times < before
    return SubjectReadings(
        readings.subject_id, readings.times[keep], readings.glucose[keep], readings.flags[keep], cohort=readings.cohort,
    )


def _fine_tune(forecaster: Forecaster, readings: SubjectReadings, config: FineTuneConfig, days: float) -> FineTuneResult:
    network = _network(forecaster)
    device = forecaster.device
    generator = torch.Generator().manual_seed(config.seed)
    bank = SeriesBank(forecaster.config, forecaster.scaler)
    bank.add("p", build_grid(readings))
    bank.finalize()
    origins = bank.training_origins()
    cut = int(origins.shape[0] * (1 - config.holdout_fraction))
    fit_origins = origins[: max(cut - forecaster.config.horizon_steps, 0)]
    held_back = origins[cut:]
    if fit_origins.shape[0] < MIN_FIT_WINDOWS or held_back.shape[0] < MIN_CHECK_WINDOWS:
        raise ValueError(
            f"personalisation needs {MIN_FIT_WINDOWS} windows to tune on and {MIN_CHECK_WINDOWS} to check on; this "
            f"patient's readings give {fit_origins.shape[0]} and {held_back.shape[0]} (gaps leave windows without history)"
        )
    half = held_back.shape[0] // 2
    fit_x, fit_y, fit_mask = _frozen_features(network, TrainingWindows(bank, fit_origins), device)
    pick = _frozen_features(network, TrainingWindows(bank, held_back[:half]), device)
    decide = _frozen_features(network, TrainingWindows(bank, held_back[half:]), device)
    population = network.output_layer
    weight = population.weight.detach().clone().requires_grad_(True)
    bias = population.bias.detach().clone().requires_grad_(True)

    def loss_of(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return pinball_loss(network.quantiles_from_output(torch.nn.functional.linear(x, weight, bias)), y, mask)

    optimiser = torch.optim.Adam([weight, bias], lr=config.learning_rate)
    with torch.no_grad():
        population_pick, population_loss = float(loss_of(*pick)), float(loss_of(*decide))
    best_pick, best = population_pick, (weight.detach().clone(), bias.detach().clone())
    for step in range(1, config.steps + 1):
        rows = torch.randperm(fit_x.shape[0], generator=generator)[: config.batch_size].to(device)
        loss = loss_of(fit_x[rows], fit_y[rows], fit_mask[rows])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % config.check_every == 0 or step == config.steps:
            with torch.no_grad():
                current = float(loss_of(*pick))
            if current < best_pick:
                best_pick, best = current, (weight.detach().clone(), bias.detach().clone())
    with torch.no_grad():
        weight.copy_(best[0])
        bias.copy_(best[1])
        personal_loss = float(loss_of(*decide))
    kept = personal_loss < population_loss * (1 - config.min_relative_gain)
    layer = PersonalOutputLayer(best[0].cpu().numpy(), best[1].cpu().numpy()) if kept else None
    return FineTuneResult(layer, population_loss, personal_loss, int(fit_origins.shape[0]), int(held_back.shape[0]), days)


def _frozen_features(network: PatchGRUForecaster, windows: TrainingWindows, device: str) -> tuple[torch.Tensor, ...]:
    """The output layer's inputs ``[N, D]``, targets ``[N, H]`` and target masks ``[N, H]`` of every window."""
    network.eval()
    features, targets, masks = [], [], []
    with torch.inference_mode():
        for batch in windows.iterate(4096, None, device):
            features.append(network.head_features(batch.x))
            targets.append(batch.y)
            masks.append(batch.mask)
    # Out of inference mode, so autograd may use them as inputs.
    return tuple(torch.cat(parts).clone() for parts in (features, targets, masks))


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
        # Scored as served: personal layers are for glucose-only forecasts, so both sides read glucose only.
        r = glucose_only(r)
        tuned = fine_tune(forecaster, glucose_only(r, before=cut_time), config)
        row: dict[str, object] = {
            "subject": key,
            "cohort": r.cohort,
            "personalised": tuned.kept,
            "holdout_gain": tuned.relative_gain,
        }
        for label, layer in (("population", None), ("personal", tuned.layer)):
            data = collect_predictions(
                {key: r},
                predict_fn=functools.partial(forecaster.predict_origin_quantiles, personal=layer),
                config=forecaster.config,
                scaler=forecaster.scaler,
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
