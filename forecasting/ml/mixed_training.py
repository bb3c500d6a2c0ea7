"""Stage 2 of training: teach the glucose-only model to use carbohydrate and insulin.

Stage 1 (:class:`forecasting.ml.training.QuantileForecasterTrainer`) learns from the real type 1 cohorts,
which carry glucose only. Stage 2 widens its input with the treatment channels (carbs, insulin and the
"treatments known" flag; see ``datasets.TREATMENT_CHANNELS``) and fine-tunes it on a mix of the same real
windows and simulated ones (simglucose, with meals and boluses). With ``treatment_summary`` (the
default since v1.2.0) the head also reads decayed carbohydrate and insulin sums
(``PatchGRUForecaster.treatment_summary``); their head weights start at zero too.

Why a warm start instead of training from scratch on the mix: the widened network starts out computing
exactly the stage-1 function (the new input weights are zero), so real-data accuracy starts where it was
and the validation loss on real subjects guards it; and the fine-tune costs a few minutes, not a full run.

Why treatment dropout: a simulated window has its treatment channels and flag zeroed with probability
``treatment_dropout``, so the network also sees simulated glucose as "treatments unknown" and does not
learn that the flag means "simulated physiology".

Pure numpy/torch; no Django.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from forecasting.ml.data import SubjectReadings
from forecasting.ml.datasets import (
    TREATMENT_CHANNELS,
    TREATMENT_START,
    Batch,
    Scaler,
    SeriesBank,
    TrainingWindows,
    WindowConfig,
)
from forecasting.ml.inference import Forecaster
from forecasting.ml.networks import PatchGRUForecaster
from forecasting.ml.risk import LogisticCalibrator
from forecasting.ml.training import (
    build_bank,
    cosine_learning_rate,
    fit_event_calibrators,
    start_run,
    summarise_data,
    train_step,
    validation_loss,
)

logger = logging.getLogger(__name__)


@dataclass
class MixedTrainingConfig:
    """Hyperparameters of the stage-2 fine-tune (saved in the artifact)."""

    epochs: int = 20
    samples_per_epoch: int = 300_000
    batch_size: int = 512
    #: Share of every batch drawn from simulated windows.
    sim_fraction: float = 0.3
    #: Probability that a simulated window's treatment channels (and flag) are zeroed.
    treatment_dropout: float = 0.3
    learning_rate: float = 5e-4
    weight_decay: float = 1e-5
    val_samples: int = 40_000
    seed: int = 0
    num_threads: int = 2
    max_minutes: float = 20.0
    #: Train only the embedding weights of the treatment channels. The stage-1 weights stay bit for bit,
    #: so on data without treatments (the flag is 0, the channels are 0) the model *is* the stage-1 model,
    #: and only data with carbohydrate/insulin columns is forecast differently.
    treatment_inputs_only: bool = False
    #: Give the head the decayed carbohydrate and insulin sums (PatchGRUForecaster.treatment_summary).
    treatment_summary: bool = True


def widen_for_treatments(base: PatchGRUForecaster, *, treatment_summary: bool = False) -> PatchGRUForecaster:
    """A copy of ``base`` that also reads the treatment channels, computing the same function.

    The patch embedding sees each slot's features followed by the relative glucose, so a token of the
    base network is ``patch x (F0 + 1)`` wide and the widened one ``patch x (F0 + 3 + 1)``. The base
    weights are copied to their new columns and the treatment columns start at zero. With
    ``treatment_summary`` the head's first layer also gets zero columns for the decayed sums, which
    come last in its input.
    """
    f0 = base.n_features
    f1 = f0 + len(TREATMENT_CHANNELS)
    wide = PatchGRUForecaster(
        n_features=f1,
        context_steps=base.context_steps,
        horizon_steps=base.horizon_steps,
        hidden=base.hidden,
        patch=base.patch,
        recent_steps=base.recent_steps,
        head_hidden=base.head_hidden,
        treatment_summary=int(treatment_summary),
    )
    state = {k: v.clone() for k, v in base.state_dict().items()}
    head_in = state["head.0.weight"]
    state["head.0.weight"] = torch.cat(
        [head_in, torch.zeros(head_in.shape[0], wide.treatment_summary_dim, dtype=head_in.dtype)], dim=1
    )
    w0 = state["embed.0.weight"]
    w1 = torch.zeros(w0.shape[0], base.patch * (f1 + 1), dtype=w0.dtype)
    for s in range(base.patch):
        w1[:, s * (f1 + 1) : s * (f1 + 1) + f0] = w0[:, s * (f0 + 1) : s * (f0 + 1) + f0]
        w1[:, s * (f1 + 1) + f1] = w0[:, s * (f0 + 1) + f0]
    state["embed.0.weight"] = w1
    wide.load_state_dict(state)
    return wide


@dataclass
class MixedEpochLog:
    epoch: int
    train_loss: float
    val_loss_real: float
    val_loss_sim: float
    seconds: float


@dataclass
class MixedFineTuner:
    """Fine-tunes a widened network on real + simulated windows; fitted attributes end in ``_``."""

    config: MixedTrainingConfig = field(default_factory=MixedTrainingConfig)
    device: str = "cpu"
    progress: bool = True

    def fit(
        self,
        base: PatchGRUForecaster,
        base_window: WindowConfig,
        scaler: Scaler,
        real_train: dict[str, SubjectReadings],
        real_val: dict[str, SubjectReadings],
        sim_train: dict[str, SubjectReadings],
        sim_val: dict[str, SubjectReadings],
    ) -> MixedFineTuner:
        cfg = self.config
        rng = start_run(seed=cfg.seed, num_threads=cfg.num_threads, device=self.device)
        started = time.monotonic()
        window = WindowConfig(**{**asdict(base_window), "use_treatments": True})
        # The scaler stays stage 1's: the glucose normalisation must not move under the warm start.
        banks = {
            name: build_bank(subjects, window, scaler)
            for name, subjects in (("real_train", real_train), ("real_val", real_val), ("sim_train", sim_train), ("sim_val", sim_val))
        }
        windows = {}
        for name, bank in banks.items():
            origins = bank.training_origins()
            if name.endswith("val") and origins.shape[0] > cfg.val_samples:
                origins = np.sort(rng.choice(origins, cfg.val_samples, replace=False))
            windows[name] = TrainingWindows(bank, origins)
        logger.info("stage 2 windows: %s", {k: len(v) for k, v in windows.items()})
        network = widen_for_treatments(base, treatment_summary=cfg.treatment_summary).to(self.device)
        if cfg.treatment_inputs_only:
            trainable = self._freeze_all_but_treatment_inputs(network)
            # No weight decay: AdamW would otherwise shrink the frozen columns of the same tensor.
            opt = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=0.0)
        else:
            opt = torch.optim.AdamW(network.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        n_sim = round(cfg.batch_size * cfg.sim_fraction)
        n_real = cfg.batch_size - n_sim
        steps_per_epoch = max(1, cfg.samples_per_epoch // cfg.batch_size)
        total_steps = cfg.epochs * steps_per_epoch
        real_loss, sim_loss = self._validate(network, windows["real_val"]), self._validate(network, windows["sim_val"])
        # Epoch 0 (the untouched stage-1 function) is a candidate too: stage 2 can only be kept if it helps.
        best = (real_loss + sim_loss, 0, copy.deepcopy(network.state_dict()))
        history = [MixedEpochLog(0, float("nan"), real_loss, sim_loss, 0.0)]
        logger.info("stage 2 epoch 0: val real %.5f sim %.5f", real_loss, sim_loss)
        step = 0
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.monotonic()
            network.train()
            total, count = 0.0, 0
            bar = tqdm(range(steps_per_epoch), desc=f"stage 2 epoch {epoch}/{cfg.epochs}", disable=not self.progress, leave=False)
            for _ in bar:
                batch = self._mixed_batch(windows["real_train"], windows["sim_train"], n_real, n_sim, rng)
                loss = train_step(network, opt, batch, cosine_learning_rate(cfg.learning_rate, step, total_steps))
                step += 1
                total += loss * batch.x.shape[0]
                count += batch.x.shape[0]
                bar.set_postfix(loss=f"{total / count:.4f}")
            real_loss, sim_loss = self._validate(network, windows["real_val"]), self._validate(network, windows["sim_val"])
            history.append(MixedEpochLog(epoch, total / max(count, 1), real_loss, sim_loss, time.monotonic() - t0))
            logger.info("stage 2 epoch %d: train %.5f, val real %.5f sim %.5f (%.0f s)", epoch, total / max(count, 1),
                        real_loss, sim_loss, time.monotonic() - t0)
            if real_loss + sim_loss < best[0] - 1e-5:
                best = (real_loss + sim_loss, epoch, copy.deepcopy(network.state_dict()))
            if (time.monotonic() - started) / 60 > cfg.max_minutes:
                logger.info("stage 2 stopping: max_minutes=%.1f reached", cfg.max_minutes)
                break
        network.load_state_dict(best[2])
        network.eval()
        for param in network.parameters():
            param.requires_grad_(True)
        self.network_ = network
        self.window_ = window
        self.scaler_ = scaler
        self.history_ = history
        self.best_epoch_ = best[1]
        # Risk calibration on the real validation subjects: live patients have no treatment data today.
        # With treatment_inputs_only the real forecasts are stage 1's, so its calibration (fitted on more
        # validation windows) stays: None tells the caller to keep it.
        self.calibrators_ = (
            None if cfg.treatment_inputs_only else self._calibrate(banks["real_val"], windows["real_val"].origins)
        )
        self.train_seconds_ = time.monotonic() - started
        self.data_summary_ = {"sim_train": summarise_data(sim_train), "sim_val": summarise_data(sim_val)}
        return self

    @staticmethod
    def _freeze_all_but_treatment_inputs(network: PatchGRUForecaster) -> list[torch.Tensor]:
        """Leave only the treatment columns of the patch embedding trainable (gradient masked)."""
        for param in network.parameters():
            param.requires_grad_(False)
        layer = network.embed[0]
        assert isinstance(layer, torch.nn.Linear)
        weight = layer.weight
        weight.requires_grad_(True)
        f1 = network.n_features
        mask = torch.zeros_like(weight)
        for s in range(network.patch):
            mask[:, s * (f1 + 1) + TREATMENT_START : s * (f1 + 1) + TREATMENT_START + len(TREATMENT_CHANNELS)] = 1.0
        weight.register_hook(lambda grad: grad * mask)
        return [weight]

    def _mixed_batch(
        self, real: TrainingWindows, sim: TrainingWindows, n_real: int, n_sim: int, rng: np.random.Generator
    ) -> Batch:
        a = real.batch(rng.choice(real.origins, n_real), self.device)
        b = sim.batch(rng.choice(sim.origins, n_sim), self.device)
        drop = torch.from_numpy(rng.random(n_sim) < self.config.treatment_dropout).to(self.device)
        b.x[drop, :, TREATMENT_START : TREATMENT_START + len(TREATMENT_CHANNELS)] = 0.0
        return Batch(x=torch.cat([a.x, b.x]), y=torch.cat([a.y, b.y]), mask=torch.cat([a.mask, b.mask]))

    def _validate(self, network: torch.nn.Module, val: TrainingWindows) -> float:
        return validation_loss(network, val, self.device)

    def _calibrate(self, bank: SeriesBank, origins: np.ndarray) -> dict[str, LogisticCalibrator]:
        forecaster = Forecaster(self.network_, self.window_, self.scaler_, {}, device=self.device)
        return fit_event_calibrators(forecaster, bank, origins)

    def metadata(self) -> dict[str, Any]:
        return {
            "window_config": asdict(self.window_),
            "mixed_training_config": asdict(self.config),
            "mixed_history": [asdict(h) for h in self.history_],
            "mixed_best_epoch": self.best_epoch_,
            **({"calibration": {k: v.to_dict() for k, v in self.calibrators_.items()}} if self.calibrators_ else {}),
            "mixed_train_seconds": round(self.train_seconds_, 1),
            "mixed_training_data": self.data_summary_,
        }
