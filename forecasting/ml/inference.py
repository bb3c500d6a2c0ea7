"""Batched inference: load a model once, forecast many patients or many origins.

Used by the worker (one call per batch of patients) and by the ``forecast_csv``
and ``evaluate_forecaster`` commands (every reading an origin).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from forecasting.ml.artifacts import load_artifact
from forecasting.ml.data import (
    BatchReadings,
    Grid,
    LatticeContext,
    SubjectReadings,
    batch_from_subjects,
    build_grid,
    off_grid,
    origin_lattice,
)
from forecasting.ml.datasets import (
    MAX_STALENESS_MINUTES,
    MIN_READINGS_LAST_HOUR,
    InferenceWindows,
    Scaler,
    SeriesBank,
    WindowConfig,
    slot_features,
    sufficient_history,
    sufficient_lattice_history,
)
from forecasting.ml.networks import PersonalOutputLayer, RowOutputLayers
from forecasting.ml.risk import RISK_EVENTS, LogisticCalibrator, event_probabilities

DEFAULT_ARTIFACT = Path(__file__).resolve().parent.parent / "artifacts" / "forecaster.json"

STATUS_OK = "ok"
STATUS_INSUFFICIENT = "insufficient_data"
REASON_NO_READINGS = "no readings"
REASON_STALE = f"last reading older than {MAX_STALENESS_MINUTES} min"
REASON_SPARSE = f"fewer than {MIN_READINGS_LAST_HOUR} readings in the last hour"

#: Per-subject outcome codes of :class:`BatchForecast`; REASONS[code] is the text stored with it.
CODE_OK, CODE_NO_READINGS, CODE_STALE, CODE_SPARSE = 0, 1, 2, 3
REASONS = ("", REASON_NO_READINGS, REASON_STALE, REASON_SPARSE)


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


@dataclass
class BatchForecast:
    """A batch's forecasts kept as arrays until rows are needed.

    Attributes:
        subject_ids: ``P`` identifiers, batch order.
        code: ``[P]`` int8 CODE_OK / CODE_NO_READINGS / CODE_STALE / CODE_SPARSE.
        origin_time: ``[P]`` int64 seconds of the newest reading (0 where there is none).
        quantiles: ``[P, H, 3]`` mg/dL p10/p50/p90 per 5-minute step; NaN unless CODE_OK.
        risk: event name -> ``[P]`` calibrated probability; NaN unless CODE_OK.
    """

    subject_ids: list[str]
    code: np.ndarray
    origin_time: np.ndarray
    quantiles: np.ndarray
    risk: dict[str, np.ndarray]

    @property
    def ok(self) -> np.ndarray:
        return self.code == CODE_OK

    @property
    def minutes_ahead(self) -> np.ndarray:
        return 5 * np.arange(1, self.quantiles.shape[1] + 1)

    def to_patient_forecasts(self) -> list[PatientForecast]:
        """One :class:`PatientForecast` per subject (the storage side's row form)."""
        steps = self.minutes_ahead.tolist()
        # Plain Python floats in one conversion per array: numpy scalars per point were slow.
        quantiles = self.quantiles.tolist()
        risk = {name: values.tolist() for name, values in self.risk.items()}
        names = [ev.name for ev in RISK_EVENTS]
        out: list[PatientForecast] = []
        for i, (sid, code, t0) in enumerate(zip(self.subject_ids, self.code.tolist(), self.origin_time.tolist(), strict=True)):
            if code == CODE_NO_READINGS:
                out.append(PatientForecast(sid, STATUS_INSUFFICIENT, REASONS[code]))
            elif code != CODE_OK:
                out.append(PatientForecast(sid, STATUS_INSUFFICIENT, REASONS[code], t0))
            else:
                points = [
                    ForecastPoint(minutes_ahead=m, time=t0 + 60 * m, p10=a, p50=b, p90=c)
                    for m, (a, b, c) in zip(steps, quantiles[i], strict=True)
                ]
                out.append(PatientForecast(sid, STATUS_OK, origin_time=t0, points=points,
                                           risk={name: risk[name][i] for name in names}))
        return out


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
    def predict_bank(
        self, bank: SeriesBank, origins: np.ndarray, batch_size: int = 8192, personal: PersonalOutputLayer | None = None,
    ) -> np.ndarray:
        """Quantile forecasts at global origin slots of a bank.

        Args:
            personal: one patient's own output layer, used for every origin (the bank holds that patient).
        Returns:
            ``[B, H, 3]`` mg/dL (p10, p50, p90), clamped to 40..400.
        """
        H = self.config.horizon_steps
        out = np.empty((origins.shape[0], H, 3), dtype=np.float64)
        pos = 0
        with torch.inference_mode():
            for o, x in InferenceWindows(bank, origins).iterate(batch_size):
                rows = None if personal is None else RowOutputLayers.repeated(o.shape[0], personal, self.device)
                q = self._forward(x, rows)
                out[pos : pos + o.shape[0]] = self.config.decode_target(q, bank.value[o], self.scaler)
                pos += o.shape[0]
        return np.clip(out, 40.0, 400.0)

    def predict_origins(
        self, bank: SeriesBank, key: str, readings: SubjectReadings, grid: Grid, origins: np.ndarray,
        batch_size: int = 8192, personal: PersonalOutputLayer | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Forecasts from readings ``origins`` of subject ``key`` of a bank: the one rule for offline work.

        A reading on the 5-minute grid is forecast from the bank; any other from a lattice ending at that
        reading (:meth:`predict_readings`), so every forecast starts from its origin's own value and time.

        Returns:
            ``[M, H, 3]`` mg/dL quantiles and ``[M]`` bool, whether the origin had enough recent data.
        """
        q = np.empty((origins.shape[0], self.config.horizon_steps, 3), dtype=np.float64)
        enough = np.empty(origins.shape[0], dtype=bool)
        off = off_grid(readings.times, grid, origins)
        on_rows, off_rows = np.flatnonzero(~off), np.flatnonzero(off)
        slots = grid.reading_slot[origins[on_rows]]
        enough[on_rows] = sufficient_history(grid.observed, slots)
        q[on_rows] = self.predict_bank(bank, bank.offsets[key] + slots, batch_size=batch_size, personal=personal)
        if off_rows.size:
            q[off_rows], enough[off_rows] = self.predict_readings(
                readings, origins[off_rows], batch_size=batch_size, personal=personal
            )
        return q, enough

    def predict_origin_quantiles(
        self, bank: SeriesBank, key: str, readings: SubjectReadings, grid: Grid, origins: np.ndarray,
        personal: PersonalOutputLayer | None = None,
    ) -> np.ndarray:
        """:meth:`predict_origins` without the enough-data flags (the evaluation scores every origin)."""
        return self.predict_origins(bank, key, readings, grid, origins, personal=personal)[0]

    def predict_readings(
        self, readings: SubjectReadings, origins: np.ndarray, batch_size: int = 8192,
        personal: PersonalOutputLayer | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Forecasts from given readings of one subject, each on a lattice ending at that reading.

        For origins the shared grid cannot place at their own time (:func:`data.off_grid`):
        1- and 3-minute sensors, near-duplicates, drifted clocks. On readings that sit on the 5-minute
        grid it gives the same context as :meth:`predict_bank`.

        Args:
            readings: one subject's sorted readings.
            origins: ``[M]`` reading indices.
        Returns:
            ``[M, H, 3]`` mg/dL quantiles (clamped 40..400) and ``[M]`` bool, whether the origin had
            enough recent data; rows without it are still computed and must not be used.
        """
        out = np.empty((origins.shape[0], self.config.horizon_steps, 3), dtype=np.float64)
        enough = np.zeros(origins.shape[0], dtype=bool)
        treated = readings.carbs is not None or readings.insulin is not None
        for lo in range(0, origins.shape[0], batch_size):
            context = origin_lattice(readings, origins[lo : lo + batch_size], self.config.context_steps)
            rows = context.value.shape[0]
            layers = None if personal is None else RowOutputLayers.repeated(rows, personal, self.device)
            out[lo : lo + rows] = self._predict_lattice(context, np.full(rows, treated), layers)
            enough[lo : lo + rows] = sufficient_lattice_history(context.observed)
        return out, enough

    def _predict_lattice(
        self, context: LatticeContext, treated: np.ndarray, personal: RowOutputLayers | None,
    ) -> np.ndarray:
        """``[M, H, 3]`` mg/dL quantiles (clamped 40..400) from origin lattices; ``treated`` is ``[M]`` bool."""
        with_treatments = self.config.use_treatments and context.carbs is not None
        x = slot_features(
            context.value, context.observed, context.slot_time,
            context.carbs if with_treatments else None,
            context.insulin if with_treatments else None,
            np.broadcast_to(treated[:, None], context.value.shape) if with_treatments else None,
            self.scaler, self.config.use_treatments,
        )
        with torch.inference_mode():
            q = self._forward(x, personal)
        self.config.decode_target(q, context.origin_value, self.scaler, out=q)
        return np.clip(q, 40.0, 400.0, out=q)

    def _forward(self, x: np.ndarray, personal: RowOutputLayers | None) -> np.ndarray:
        """The network on ``[B, L, F]`` float32 features -> ``[B, H, 3]`` float64 normalised deltas."""
        return self.network(torch.from_numpy(x).to(self.device), personal).cpu().numpy().astype(np.float64)

    def risk(self, quantiles: np.ndarray) -> dict[str, np.ndarray]:
        """Calibrated event probabilities from ``[B, H, 3]`` quantiles -> event -> ``[B]``."""
        return event_probabilities(quantiles[..., 0], quantiles[..., 1], quantiles[..., 2], self.calibrators)

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

    def _batch_grid(self, batch: BatchReadings) -> tuple[Grid, np.ndarray, np.ndarray, np.ndarray]:
        """One grid for a whole batch, each subject's first and newest reading slot (-1 if none), and
        whether each subject's newest reading is off the grid (:func:`data.off_grid`).

        Why one grid: gridding patients one by one costs tens of microseconds of numpy calls each, more
        than their share of the forward pass. Instead subject i's readings are shifted by a whole number of
        days (time of day, and so every feature, is unchanged) so that it starts more than a day after
        subject i-1's last reading, and the batch is gridded once. A day's gap is more than 30 minutes, so
        each subject starts a new segment anchored at its own first reading, exactly as alone, and nothing
        is interpolated across it. Only SUBJECT_GAP_SLOTS empty slots separate two subjects (not
        MAX_EMPTY_SLOTS, which left most of the grid empty): every window slot before a subject's first
        reading is masked in `_predict_windows`, and the last-hour check reaches back 12 slots.
        """
        day = 86_400
        lengths = batch.lengths
        present = np.flatnonzero(lengths > 0)
        first_idx, last_idx = batch.offsets[present], batch.offsets[present + 1] - 1
        if present.shape[0] == 1:
            # One subject with readings (the worker's single-patient task): nothing to keep apart, and a
            # shift by whole days would change no feature, so the times are gridded as they are.
            times = batch.times
        else:
            # Put every subject's first reading on day 0, then give subject k the days after subject k-1's last.
            base = -(batch.times[first_idx] // day) * day
            span_days = (batch.times[last_idx] + base) // day + 1
            start_day = np.concatenate([[0], np.cumsum(span_days + 1)[:-1]]).astype(np.int64)
            shift = np.zeros(len(batch), dtype=np.int64)
            shift[present] = base + start_day * day
            times = batch.times + np.repeat(shift, lengths)
        # A batch in which nobody's treatments are known (most live batches) skips the channels: they stay zero.
        treated = self.config.use_treatments and bool(batch.has_treatments.any())
        grid = build_grid(SubjectReadings(
            subject_id="batch",
            times=times,
            glucose=batch.glucose,
            flags=batch.flags,
            carbs=batch.carbs if treated else None,
            insulin=batch.insulin if treated else None,
        ), subject_starts=first_idx[1:])
        first_slot = np.full(len(batch), -1, dtype=np.int64)
        last_slot = np.full(len(batch), -1, dtype=np.int64)
        first_slot[present] = grid.reading_slot[first_idx]
        last_slot[present] = grid.reading_slot[last_idx]
        newest_off_grid = np.zeros(len(batch), dtype=bool)
        newest_off_grid[present] = off_grid(times, grid, last_idx)
        return grid, first_slot, last_slot, newest_off_grid

    def _predict_windows(
        self, grid: Grid, first: np.ndarray, last: np.ndarray, treated: np.ndarray,
        personal: Mapping[int, PersonalOutputLayer],
    ) -> np.ndarray:
        """Quantiles ``[B, H, 3]`` (mg/dL, clamped 40..400) at slots ``last`` of a batch grid.

        ``personal`` maps a window's position in ``last`` to its patient's own output layer.

        Only the context windows' slots are gathered and turned into features (what :meth:`predict_bank`
        reads from a bank): slots before a subject's first reading, the padding of a lone subject's bank
        or the gap before it in the batch grid, are zero, so no window sees another subject.
        """
        L, H = self.config.context_steps, self.config.horizon_steps
        window = np.arange(-L + 1, 1)
        # A grid built without treatment arrays (nobody in the batch has them) has all-zero treatment
        # channels, and so does every subject's treatments-known flag: slot_features leaves them zero.
        gather_treatments = self.config.use_treatments and grid.has_treatments
        out = np.empty((last.shape[0], H, 3), dtype=np.float64)
        with torch.inference_mode():
            for lo in range(0, last.shape[0], 8192):
                hi = min(lo + 8192, last.shape[0])
                idx = last[lo:hi, None] + window
                # Only subjects with less than a context of grid since their first reading need masking;
                # a live batch of 6.5 h histories has none, and then the mask passes are skipped.
                short = bool((last[lo:hi] - first[lo:hi] < L - 1).any())
                outside = idx < first[lo:hi, None] if short else None
                if outside is not None:
                    idx[outside] = 0
                x = slot_features(
                    grid.value[idx], grid.observed[idx], grid.slot_time[idx],
                    grid.carbs[idx] if gather_treatments else None,
                    grid.insulin[idx] if gather_treatments else None,
                    np.broadcast_to(treated[lo:hi, None], idx.shape) if gather_treatments else None,
                    self.scaler, self.config.use_treatments,
                )
                if outside is not None:
                    x[outside] = 0.0
                own = [i for i in range(lo, hi) if i in personal] if personal else []
                rows = RowOutputLayers.stack(np.array(own) - lo, [personal[i] for i in own], self.device) if own else None
                q = self._forward(x, rows)
                # Decoded and clamped in place: the same arithmetic as decode_target + np.clip, without
                # their temporaries of the whole [B, H, 3] block.
                self.config.decode_target(q, grid.value[last[lo:hi]], self.scaler, out=q)
                np.clip(q, 40.0, 400.0, out=out[lo:hi])
        return out

    def forecast_batch(
        self, batch: BatchReadings, now: int | None = None, personal: Mapping[int, PersonalOutputLayer] | None = None,
    ) -> BatchForecast:
        """Forecast from each subject's latest reading, the whole batch in arrays.

        Args:
            batch: recent readings per subject (at least the last 6 h for full context; less still
                works, with the gap masked).
            now: current time in seconds (same clock as the readings); when given, a subject whose
                newest reading is older than MAX_STALENESS_MINUTES gets ``insufficient_data``.
            personal: batch row -> that subject's own output layer (personalised patients); the
                others use the population layer.
        Returns:
            a :class:`BatchForecast`, rows in batch order.
        """
        count, horizon = len(batch), self.config.horizon_steps
        present = batch.lengths > 0
        code = np.where(present, CODE_OK, CODE_NO_READINGS).astype(np.int8)
        origin_time = np.zeros(count, dtype=np.int64)
        origin_time[present] = batch.times[batch.offsets[1:][present] - 1]
        if now is not None:
            code[present & (now - origin_time > MAX_STALENESS_MINUTES * 60)] = CODE_STALE
        quantiles = np.full((count, horizon, 3), np.nan)
        risk = {ev.name: np.full(count, np.nan) for ev in RISK_EVENTS}
        if present.any():
            grid, first, last, newest_off_grid = self._batch_grid(batch)
            todo = np.flatnonzero(code == CODE_OK)
            lattice_rows = todo[newest_off_grid[todo]]
            if lattice_rows.size:
                # Newest reading off the grid (1-minute uploads, a near-duplicate): forecast from a
                # lattice ending at that reading, so the forecast starts from the newest value.
                q, enough = self._forecast_newest_on_lattice(batch, lattice_rows, personal or {})
                code[lattice_rows[~enough]] = CODE_SPARSE
                quantiles[lattice_rows[enough]] = q[enough]
                for name, values in self.risk(q[enough]).items():
                    risk[name][lattice_rows[enough]] = values
                todo = todo[~newest_off_grid[todo]]
            enough = sufficient_history(grid.observed, last[todo])
            code[todo[~enough]] = CODE_SPARSE
            todo = todo[enough]
            if todo.size == count:
                # Everyone forecast (the usual live batch): the arrays are the result, no scatter.
                quantiles = self._predict_windows(grid, first, last, batch.has_treatments, personal or {})
                risk = self.risk(quantiles)
            elif todo.size:
                position = {row: i for i, row in enumerate(todo.tolist())}
                own = {position[row]: layer for row, layer in (personal or {}).items() if row in position}
                q = self._predict_windows(grid, first[todo], last[todo], batch.has_treatments[todo], own)
                quantiles[todo] = q
                for name, values in self.risk(q).items():
                    risk[name][todo] = values
        return BatchForecast(list(batch.subject_ids), code, origin_time, quantiles, risk)

    def _forecast_newest_on_lattice(
        self, batch: BatchReadings, rows: np.ndarray, personal: Mapping[int, PersonalOutputLayer],
    ) -> tuple[np.ndarray, np.ndarray]:
        """``[R, H, 3]`` quantiles from batch ``rows``' newest readings on lattices, and ``[R]`` enough data."""
        context = LatticeContext.concatenate([
            origin_lattice(s, np.array([len(s) - 1]), self.config.context_steps)
            for s in (batch.subject(i) for i in rows.tolist())
        ])
        own = [(pos, personal[row]) for pos, row in enumerate(rows.tolist()) if row in personal]
        layers = (
            RowOutputLayers.stack(np.array([pos for pos, _ in own]), [layer for _, layer in own], self.device)
            if own else None
        )
        q = self._predict_lattice(context, batch.has_treatments[rows], layers)
        return q, sufficient_lattice_history(context.observed)

    def forecast_patients(self, patients: list[SubjectReadings], now: int | None = None) -> list[PatientForecast]:
        """:meth:`forecast_batch` for a list of :class:`SubjectReadings`, one :class:`PatientForecast` each."""
        return self.forecast_batch(batch_from_subjects(patients), now).to_patient_forecasts()
