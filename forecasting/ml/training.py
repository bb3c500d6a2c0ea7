"""Training: subject splits, the seeded training loop, early stopping, calibration.

The estimator follows the scikit-learn shape: ``QuantileForecasterTrainer(...)
.fit(train, val)`` sets fitted attributes ending in ``_``; ``to_forecaster()``
hands back an inference object.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from forecasting.ml.baselines import RidgeLagged
from forecasting.ml.data import TYPE1_COHORTS, SubjectReadings, build_grid
from forecasting.ml.datasets import Batch, Scaler, SeriesBank, TrainingWindows, WindowConfig
from forecasting.ml.inference import Forecaster
from forecasting.ml.networks import PatchGRUForecaster, pinball_loss
from forecasting.ml.risk import LogisticCalibrator, event_outcomes, raw_event_probabilities

logger = logging.getLogger(__name__)


@dataclass
class TrainingConfig:
    """Hyperparameters of one training run (all saved in the artifact)."""

    epochs: int = 14
    batch_size: int = 512
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    samples_per_epoch: int = 300_000
    val_samples: int = 80_000
    # Generous patience: validation has few subjects and is noisy, and the
    # cosine schedule only pays off once the learning rate has decayed.
    patience: int = 6
    seed: int = 0
    max_minutes: float = 21.0
    hidden: int = 64
    head_hidden: int = 128
    # 30-min tokens: same validation loss as 15-min ones, half the GRU steps,
    # which is what lets forecast_csv reach >20k origins/s on 2 cores.
    patch: int = 6
    num_threads: int = 2
    ridge_samples: int = 200_000


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start_run(*, seed: int, num_threads: int, device: str) -> np.random.Generator:
    """Cap torch's CPU threads at the configured count and seed every generator; returns the run's numpy one."""
    if device == "cpu":
        torch.set_num_threads(num_threads)
    seed_everything(seed)
    return np.random.default_rng(seed)


def cosine_learning_rate(base_lr: float, step: int, total_steps: int) -> float:
    """Cosine decay from ``base_lr`` to 5 % of it over the planned steps.

    Driven by steps, not wall-clock, so runs are reproducible; a time cap only stops the loop early.
    """
    return float(base_lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(step / total_steps, 1.0)))))


def train_step(network: torch.nn.Module, opt: torch.optim.Optimizer, batch: Batch, lr: float) -> float:
    """One clipped AdamW step on the pinball loss at learning rate ``lr``; returns the batch's mean loss."""
    for group in opt.param_groups:
        group["lr"] = lr
    loss = pinball_loss(network(batch.x), batch.y, batch.mask)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
    opt.step()
    return float(loss.detach())


def validation_loss(network: torch.nn.Module, val: TrainingWindows, device: str, batch_size: int = 4096) -> float:
    """Pinball loss over every validation window, weighted by the number of known target slots."""
    network.eval()
    total, weight = 0.0, 0.0
    with torch.inference_mode():
        for batch in val.iterate(batch_size, None, device):
            w = float(batch.mask.sum())
            total += float(pinball_loss(network(batch.x), batch.y, batch.mask)) * w
            weight += w
    return total / max(weight, 1.0)


def fit_event_calibrators(forecaster: Forecaster, bank: SeriesBank, origins: np.ndarray) -> dict[str, LogisticCalibrator]:
    """One logistic calibrator per risk event, fitted on ``forecaster``'s raw probabilities at ``origins``.

    An event with too few known windows or occurrences keeps the identity calibrator: a fit on a
    handful of points would be noise.
    """
    q = forecaster.predict_bank(bank, origins)
    raw = raw_event_probabilities(q[..., 0], q[..., 1], q[..., 2])
    future, _ = bank.targets(origins)
    outcomes = event_outcomes(future)
    cals: dict[str, LogisticCalibrator] = {}
    for name, p in raw.items():
        happened, known = outcomes[name]
        if known.sum() < 50 or happened[known].sum() < 5:
            cals[name] = LogisticCalibrator()
        else:
            cals[name] = LogisticCalibrator().fit(p[known], happened[known])
    return cals


def split_subjects(
    subjects: dict[str, SubjectReadings],
    test_fraction: float = 0.2,
    val_fraction: float = 0.12,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Split subject keys into train/val/test, stratified by cohort (never by time).

    Every cohort with >= 3 subjects contributes at least one test and one
    validation subject, so per-cohort scores exist for held-out people.
    """
    rng = np.random.default_rng(seed)
    by_cohort: dict[str, list[str]] = {}
    for key, r in subjects.items():
        by_cohort.setdefault(r.cohort, []).append(key)
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    # Type 1 cohorts draw first, so adding other cohorts leaves their split (and the reported held-out
    # type 1 subjects) exactly as it was.
    for cohort in sorted(by_cohort, key=lambda c: (c not in TYPE1_COHORTS, c)):
        keys = sorted(by_cohort[cohort])
        keys = [keys[i] for i in rng.permutation(len(keys))]
        n = len(keys)
        n_test = max(1, round(n * test_fraction)) if n >= 3 else 0
        n_val = max(1, round(n * val_fraction)) if n >= 3 else 0
        out["test"] += keys[:n_test]
        out["val"] += keys[n_test : n_test + n_val]
        out["train"] += keys[n_test + n_val :]
    return out


def build_bank(subjects: dict[str, SubjectReadings], config: WindowConfig, scaler: Scaler) -> SeriesBank:
    bank = SeriesBank(config, scaler)
    for key, readings in subjects.items():
        grid = build_grid(readings)
        if grid.n_slots:
            bank.add(key, grid)
    return bank.finalize()


def summarise_data(subjects: dict[str, SubjectReadings]) -> dict[str, Any]:
    """Counts per cohort for the artifact's training data summary."""
    out: dict[str, Any] = {}
    for r in subjects.values():
        c = out.setdefault(r.cohort or "all", {"subjects": 0, "readings": 0, "days": 0.0})
        c["subjects"] += 1
        c["readings"] += len(r)
        c["days"] += len(r) * 5 / 1440
    for c in out.values():
        c["days"] = round(c["days"], 1)
    return out


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    val_loss: float
    seconds: float
    lr: float


@dataclass
class QuantileForecasterTrainer:
    """Fits a :class:`PatchGRUForecaster` with pinball loss and early stopping.

    Fitted attributes: ``network_``, ``scaler_``, ``history_``, ``best_epoch_``,
    ``calibrators_``, ``ridge_``, ``train_seconds_``.
    """

    config: TrainingConfig = field(default_factory=TrainingConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    device: str = "cpu"
    progress: bool = True

    def fit(self, train: dict[str, SubjectReadings], val: dict[str, SubjectReadings]) -> QuantileForecasterTrainer:
        cfg = self.config
        rng = start_run(seed=cfg.seed, num_threads=cfg.num_threads, device=self.device)
        started = time.monotonic()
        # Scaler from training subjects only, so validation stays unseen.
        all_vals = np.concatenate([r.glucose for r in train.values()])
        scaler = Scaler().fit(all_vals)
        train_bank = build_bank(train, self.window, scaler)
        val_bank = build_bank(val, self.window, scaler)
        train_win = TrainingWindows(train_bank, train_bank.training_origins())
        val_origins = val_bank.training_origins()
        if val_origins.shape[0] > cfg.val_samples:
            val_origins = np.sort(rng.choice(val_origins, cfg.val_samples, replace=False))
        val_win = TrainingWindows(val_bank, val_origins)
        logger.info("training windows: %d, validation windows: %d", len(train_win), len(val_win))
        network = PatchGRUForecaster(
            n_features=self.window.n_features,
            context_steps=self.window.context_steps,
            horizon_steps=self.window.horizon_steps,
            hidden=cfg.hidden,
            head_hidden=cfg.head_hidden,
            patch=cfg.patch,
        ).to(self.device)
        opt = torch.optim.AdamW(network.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        best_state = copy.deepcopy(network.state_dict())
        best_val = float("inf")
        best_epoch = 0
        history: list[EpochLog] = []
        bad_epochs = 0
        per_epoch = min(cfg.samples_per_epoch, len(train_win))
        total_steps = cfg.epochs * ((per_epoch + cfg.batch_size - 1) // cfg.batch_size)
        step = 0
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.monotonic()
            network.train()
            total, count = 0.0, 0
            n_batches = (per_epoch + cfg.batch_size - 1) // cfg.batch_size
            bar = tqdm(
                train_win.iterate(cfg.batch_size, rng, self.device, limit=per_epoch),
                total=n_batches,
                desc=f"epoch {epoch}/{cfg.epochs}",
                disable=not self.progress,
                leave=False,
            )
            stop_for_time = False
            for batch in bar:
                loss = train_step(network, opt, batch, cosine_learning_rate(cfg.learning_rate, step, total_steps))
                step += 1
                total += loss * batch.x.shape[0]
                count += batch.x.shape[0]
                bar.set_postfix(loss=f"{total / count:.4f}")
                if (time.monotonic() - started) / 60 > cfg.max_minutes:
                    stop_for_time = True
                    break
            val_loss = validation_loss(network, val_win, self.device)
            log = EpochLog(epoch, total / max(count, 1), val_loss, time.monotonic() - t0, opt.param_groups[0]["lr"])
            history.append(log)
            logger.info("epoch %d train_loss %.5f val_loss %.5f (%.0f s)", epoch, log.train_loss, val_loss, log.seconds)
            if val_loss < best_val - 1e-5:
                best_val, best_epoch, bad_epochs = val_loss, epoch, 0
                best_state = copy.deepcopy(network.state_dict())
            else:
                bad_epochs += 1
            if bad_epochs >= cfg.patience:
                logger.info("early stopping at epoch %d (best %d)", epoch, best_epoch)
                break
            if stop_for_time:
                logger.info("stopping: max_minutes=%.1f reached", cfg.max_minutes)
                break
        network.load_state_dict(best_state)
        network.eval()
        self.network_ = network
        self.scaler_ = scaler
        self.history_ = history
        self.best_epoch_ = best_epoch
        self.best_val_loss_ = best_val
        self.calibrators_ = self._calibrate(val_bank, val_origins)
        self.ridge_ = self._fit_ridge(train_bank, train_win.origins, rng)
        self.train_seconds_ = time.monotonic() - started
        self.data_summary_ = {"train": summarise_data(train), "val": summarise_data(val)}
        return self

    def _calibrate(self, bank: SeriesBank, origins: np.ndarray) -> dict[str, LogisticCalibrator]:
        return fit_event_calibrators(self.to_forecaster(calibrators={}), bank, origins)

    def _fit_ridge(self, bank: SeriesBank, origins: np.ndarray, rng: np.random.Generator) -> RidgeLagged:
        if origins.shape[0] > self.config.ridge_samples:
            origins = rng.choice(origins, self.config.ridge_samples, replace=False)
        L = self.window.context_steps
        ctx = bank.value[origins[:, None] + np.arange(-L + 1, 1)[None, :]]
        fut, _ = bank.targets(origins)
        return RidgeLagged().fit(ctx, fut)

    def to_forecaster(self, calibrators: dict[str, LogisticCalibrator] | None = None) -> Forecaster:
        return Forecaster(
            self.network_,
            self.window,
            self.scaler_,
            self.calibrators_ if calibrators is None else calibrators,
            metadata=self.metadata(),
            device=self.device,
        )

    def metadata(self) -> dict[str, Any]:
        """Everything the artifact JSON needs except weights-related fields."""
        return {
            "window_config": asdict(self.window),
            "scaler": self.scaler_.to_dict(),
            "training_config": asdict(self.config),
            "calibration": {k: v.to_dict() for k, v in getattr(self, "calibrators_", {}).items()},
            "history": [asdict(h) for h in getattr(self, "history_", [])],
            "best_epoch": getattr(self, "best_epoch_", 0),
            "ridge": self.ridge_.to_dict() if hasattr(self, "ridge_") else None,
            "training_data": getattr(self, "data_summary_", {}),
            "train_seconds": round(getattr(self, "train_seconds_", 0.0), 1),
            "device": self.device,
        }
