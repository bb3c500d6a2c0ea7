"""Batched inference: load a model once, forecast many patients or many origins.

Used by the worker (one call per batch of patients) and by the ``forecast_csv``
and ``evaluate_forecaster`` commands (every reading an origin).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from forecasting.ml.artifacts import load_artifact
from forecasting.ml.data import SubjectReadings, build_grid
from forecasting.ml.datasets import (
    MAX_STALENESS_MINUTES,
    MIN_READINGS_LAST_HOUR,
    InferenceWindows,
    Scaler,
    SeriesBank,
    WindowConfig,
    sufficient_history,
)
from forecasting.ml.risk import RISK_EVENTS, LogisticCalibrator, raw_event_probabilities

DEFAULT_ARTIFACT = Path(__file__).resolve().parent.parent / "artifacts" / "forecaster.json"

STATUS_OK = "ok"
STATUS_INSUFFICIENT = "insufficient_data"
REASON_NO_READINGS = "no readings"
REASON_STALE = f"last reading older than {MAX_STALENESS_MINUTES} min"
REASON_SPARSE = f"fewer than {MIN_READINGS_LAST_HOUR} readings in the last hour"


@dataclass
class ForecastPoint:
    """One forecast step: minutes after the last reading, and its quantiles (mg/dL)."""

    minutes_ahead: int
    time: int
    p10: float
    p50: float
    p90: float


@dataclass
class PatientForecast:
    """Forecast for one patient, or the reason there is none."""

    subject_id: str
    status: str
    reason: str = ""
    origin_time: int | None = None
    points: list[ForecastPoint] = field(default_factory=list)
    risk: dict[str, float] = field(default_factory=dict)


class Forecaster:
    """A loaded quantile forecaster plus its scaler and risk calibration.

    Args:
        network: module mapping ``[B, L, F]`` -> ``[B, H, 3]`` normalised deltas.
        config: window geometry the network was trained with.
        scaler: normalisation constants from training.
        calibrators: event name -> :class:`LogisticCalibrator` (identity if absent).
    """

    def __init__(
        self,
        network: nn.Module,
        config: WindowConfig,
        scaler: Scaler,
        calibrators: dict[str, LogisticCalibrator] | None = None,
        metadata: dict[str, Any] | None = None,
        device: str = "cpu",
    ) -> None:
        self.network = network.to(device).eval()
        self.config = config
        self.scaler = scaler
        self.calibrators = calibrators or {}
        self.metadata = metadata or {}
        self.device = device

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu") -> Forecaster:
        """Load from an artifact JSON (default: the shipped model)."""
        network, meta = load_artifact(path or DEFAULT_ARTIFACT, device=device)
        cfg = meta["window_config"]
        calibrators = {k: LogisticCalibrator(**v) for k, v in meta.get("calibration", {}).items()}
        return cls(
            network,
            WindowConfig(**cfg),
            Scaler.from_dict(meta["scaler"]),
            calibrators,
            metadata=meta,
            device=device,
        )

    # ------------------------------------------------------------------
    def predict_bank(self, bank: SeriesBank, origins: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """Quantile forecasts at global origin slots of a bank.

        Returns:
            ``[B, H, 3]`` mg/dL (p10, p50, p90), clamped to 40..400.
        """
        H = self.config.horizon_steps
        out = np.empty((origins.shape[0], H, 3), dtype=np.float64)
        pos = 0
        with torch.inference_mode():
            for o, x in InferenceWindows(bank, origins).iterate(batch_size):
                q = self.network(torch.from_numpy(x).to(self.device)).cpu().numpy().astype(np.float64)
                out[pos : pos + o.shape[0]] = self.config.decode_target(q, bank.value[o], self.scaler)
                pos += o.shape[0]
        return np.clip(out, 40.0, 400.0)

    def risk(self, quantiles: np.ndarray) -> dict[str, np.ndarray]:
        """Calibrated event probabilities from ``[B, H, 3]`` quantiles -> event -> ``[B]``."""
        raw = raw_event_probabilities(quantiles[..., 0], quantiles[..., 1], quantiles[..., 2])
        return {k: self.calibrators[k].predict(v) if k in self.calibrators else v for k, v in raw.items()}

    def make_bank(self, subjects: dict[str, SubjectReadings]) -> tuple[SeriesBank, dict[str, Any]]:
        """Grid every subject into one bank; returns the bank and per-key grids."""
        bank = SeriesBank(self.config, self.scaler)
        grids = {}
        for key, readings in subjects.items():
            grid = build_grid(readings)
            grids[key] = grid
            if grid.n_slots:
                bank.add(key, grid)
        return bank.finalize(), grids

    def _batch_bank(self, patients: list[SubjectReadings]) -> tuple[SeriesBank, list[int | None]]:
        """One bank for a batch of patients, and the global slot of each patient's newest reading.

        Why one grid: gridding patients one by one costs about a millisecond of numpy calls each, more
        than the forward pass. Instead patient i's readings are shifted by a whole number of days (time of
        day, and so every feature, is unchanged) to start at least a day after patient i-1's last reading,
        and the batch is gridded once. A day's gap is more than 30 minutes, so each patient starts a new
        segment anchored at its own first reading, exactly as alone, and it leaves MAX_EMPTY_SLOTS (10 h)
        of masked slots between patients, more than a context window, so no window sees another patient.
        Mixed batches (some patients with treatment columns, some without) fall back to one grid each,
        because ``has_treatments`` is per grid.
        """
        present = [p for p in patients if len(p)]
        kinds = {(p.carbs is None, p.insulin is None) for p in present}
        if len(present) < 2 or len(kinds) > 1:
            keys = [f"{i}" for i in range(len(patients))]
            bank, grids = self.make_bank(dict(zip(keys, patients, strict=True)))
            return bank, [bank.offsets[k] + grids[k].n_slots - 1 if grids[k].n_slots else None for k in keys]
        day = 86_400
        shifted: list[np.ndarray] = []
        last_index: list[int | None] = []
        cursor: int | None = None
        count = 0
        for p in patients:
            if not len(p):
                last_index.append(None)
                continue
            first = int(p.times[0])
            shift = 0 if cursor is None else -(-(cursor + day - first) // day) * day
            shifted.append(p.times + shift)
            cursor = int(p.times[-1]) + shift
            count += len(p)
            last_index.append(count - 1)
        no_carbs, no_insulin = next(iter(kinds))
        combined = SubjectReadings(
            subject_id="batch",
            times=np.concatenate(shifted),
            glucose=np.concatenate([p.glucose for p in present]),
            flags=np.concatenate([p.flags for p in present]),
            carbs=None if no_carbs else np.concatenate([p.carbs for p in present]),  # type: ignore[misc]
            insulin=None if no_insulin else np.concatenate([p.insulin for p in present]),  # type: ignore[misc]
        )
        grid = build_grid(combined)
        bank = SeriesBank(self.config, self.scaler)
        offset = bank.add("batch", grid)
        bank.finalize()
        # The filler between two patients must read like the zero padding before a lone patient's first
        # reading (its time-of-day features would otherwise be set), so short histories match exactly.
        ends = [i for i in last_index if i is not None]
        for prev_last in ends[:-1]:  # reading prev_last + 1 is the next patient's first
            start, stop = int(grid.reading_slot[prev_last]) + 1, int(grid.reading_slot[prev_last + 1])
            bank.features[offset + start : offset + stop] = 0.0
        return bank, [None if idx is None else offset + int(grid.reading_slot[idx]) for idx in last_index]

    def forecast_patients(self, patients: list[SubjectReadings], now: int | None = None) -> list[PatientForecast]:
        """Forecast from each patient's latest reading, in one batch.

        Args:
            patients: recent readings per patient (at least the last 6 h for
                full context; less still works, with the gap masked).
            now: current time in seconds (same clock as the readings); when
                given, a patient whose newest reading is older than
                MAX_STALENESS_MINUTES gets ``insufficient_data``.
        Returns:
            one :class:`PatientForecast` per input, same order.
        """
        bank, last_slots = self._batch_bank(patients)
        results: list[PatientForecast] = []
        todo: list[tuple[int, int]] = []
        for i, p in enumerate(patients):
            last_slot = last_slots[i]
            if len(p) == 0 or last_slot is None:
                results.append(PatientForecast(p.subject_id, STATUS_INSUFFICIENT, REASON_NO_READINGS))
                continue
            last_time = int(p.times[-1])
            if now is not None and now - last_time > MAX_STALENESS_MINUTES * 60:
                results.append(PatientForecast(p.subject_id, STATUS_INSUFFICIENT, REASON_STALE, last_time))
                continue
            results.append(PatientForecast(p.subject_id, STATUS_OK, origin_time=last_time))
            todo.append((i, last_slot))
        if todo:
            origins = np.array([g for _, g in todo], dtype=np.int64)
            enough = sufficient_history(bank.observed, origins)
            for (i, _), ok in zip(todo, enough, strict=True):
                if not ok:
                    res = results[i]
                    results[i] = PatientForecast(res.subject_id, STATUS_INSUFFICIENT, REASON_SPARSE, res.origin_time)
            todo = [t for t, ok in zip(todo, enough, strict=True) if ok]
            origins = origins[enough]
        if todo:
            q = self.predict_bank(bank, origins)
            risk = {name: values.tolist() for name, values in self.risk(q).items()}
            # Plain Python floats in one conversion: building 24 points per patient from numpy scalars
            # was a large share of the batch time.
            steps = [5 * (k + 1) for k in range(q.shape[1])]
            quantiles = q.tolist()
            for row, (i, _) in enumerate(todo):
                res = results[i]
                t0 = int(res.origin_time or 0)
                res.points = [
                    ForecastPoint(minutes_ahead=m, time=t0 + 60 * m, p10=a, p50=b, p90=c)
                    for m, (a, b, c) in zip(steps, quantiles[row], strict=True)
                ]
                res.risk = {ev.name: float(risk[ev.name][row]) for ev in RISK_EVENTS}
        return results
