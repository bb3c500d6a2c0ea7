"""Feature construction and window datasets (training and inference kept apart).

A :class:`SeriesBank` concatenates the per-slot features of many subjects with
zero padding between them, so that a window is one fancy-indexing gather and a
window can never reach into another subject's data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import cache

import numpy as np
import torch

from forecasting.ml.data import Grid

#: Readings required in the last hour for a forecast to be made at all.
MIN_READINGS_LAST_HOUR = 3
#: Slots in the last hour, the origin's own included.
LAST_HOUR_SLOTS = 12
#: A forecast is refused when the newest reading is older than this.
MAX_STALENESS_MINUTES = 15

BASE_CHANNELS = ("glucose", "available", "observed", "tod_sin", "tod_cos")
#: ``treatments_known`` is 1 for subjects whose data carries carbohydrate/insulin columns at all. Without
#: it, "no treatment data" (every real CGM-only cohort, every live patient today) would look exactly like
#: "ate nothing and took no insulin", and the network could not learn both situations.
TREATMENT_CHANNELS = ("carbs", "insulin", "treatments_known")
#: Index of the first treatment channel in the feature axis.
TREATMENT_START = len(BASE_CHANNELS)


@dataclass
class Scaler:
    """Normalisation constants, fitted on training subjects only."""

    glucose_mean: float = 150.0
    glucose_std: float = 60.0
    carbs_scale: float = 50.0
    insulin_scale: float = 5.0

    def fit(self, values: np.ndarray) -> Scaler:
        v = values[~np.isnan(values)]
        self.glucose_mean = float(v.mean())
        self.glucose_std = float(v.std())
        return self

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> Scaler:
        return cls(**d)


@dataclass(frozen=True)
class WindowConfig:
    """Window geometry: context_steps and horizon_steps are counted in 5-min slots."""

    context_steps: int = 72
    horizon_steps: int = 24
    use_treatments: bool = False
    #: Targets as log-ratios ln(g_future / g_last) instead of mg/dL deltas. Quantiles
    #: survive any monotone transform, and relative errors are what Clarke, MARD and
    #: hypo detection punish, so low values get the precision they need.
    log_target: bool = True

    def target_scale(self, scaler: Scaler) -> float:
        """Divisor that puts targets on a unit-ish scale."""
        return scaler.glucose_std / scaler.glucose_mean if self.log_target else scaler.glucose_std

    def encode_target(self, future: np.ndarray, last: np.ndarray, scaler: Scaler) -> np.ndarray:
        """``[B, H]`` mg/dL futures -> normalised targets relative to ``[B]`` last values."""
        if self.log_target:
            return np.log(future / last[:, None]) / self.target_scale(scaler)
        return (future - last[:, None]) / self.target_scale(scaler)

    def decode_target(self, z: np.ndarray, last: np.ndarray, scaler: Scaler, out: np.ndarray | None = None) -> np.ndarray:
        """Inverse of :meth:`encode_target`; works on ``[B, H]`` or ``[B, H, Q]``.

        ``out`` (may be ``z`` itself, of z's float dtype) receives the result: the same operations in the
        same order, without the temporaries of a large batch.
        """
        shape = (-1,) + (1,) * (z.ndim - 1)
        base = last.reshape(shape)
        if out is None:
            if self.log_target:
                return base * np.exp(z * self.target_scale(scaler))
            return base + z * self.target_scale(scaler)
        np.multiply(z, self.target_scale(scaler), out=out)
        if self.log_target:
            np.exp(out, out=out)
            # base * e == e * base: IEEE multiplication is commutative, so the result is unchanged.
            np.multiply(out, base, out=out)
        else:
            np.add(out, base, out=out)
        return out

    @property
    def channels(self) -> tuple[str, ...]:
        return BASE_CHANNELS + (TREATMENT_CHANNELS if self.use_treatments else ())

    @property
    def n_features(self) -> int:
        return len(self.channels)


def grid_features(grid: Grid, scaler: Scaler, use_treatments: bool) -> np.ndarray:
    """Per-slot input features.

    Returns:
        ``[S, F]`` float32 with channels :data:`BASE_CHANNELS` (+ :data:`TREATMENT_CHANNELS`):
        normalised glucose (0 where unavailable), available mask (real or
        interpolated), observed mask (real only), time-of-day sine/cosine, and
        optionally carbohydrate (g / carbs_scale), insulin (U / insulin_scale)
        and the treatments-known flag (all three 0 when the subject has no
        treatment columns).
    """
    known = np.full(grid.n_slots, 1.0 if grid.has_treatments else 0.0)
    return slot_features(grid.value, grid.observed, grid.slot_time, grid.carbs, grid.insulin, known, scaler, use_treatments)


@cache
def _time_of_day_table() -> tuple[np.ndarray, np.ndarray]:
    """sin and cos of the day angle for every second of a day, as float32 (what the features store).

    Why a table: a slot's time of day is a whole second, so a lookup returns exactly what computing the
    float64 sine and cosine and casting gives, and np.sin/np.cos on float64 were the costliest part of
    building a batch's features (about a microsecond per window slot for the pair).
    """
    angle = 2 * np.pi * (np.arange(86400) / 86400.0)
    return np.sin(angle).astype(np.float32), np.cos(angle).astype(np.float32)


def slot_features(
    value: np.ndarray,
    observed: np.ndarray,
    slot_time: np.ndarray,
    carbs: np.ndarray | None,
    insulin: np.ndarray | None,
    treatments_known: np.ndarray | None,
    scaler: Scaler,
    use_treatments: bool,
) -> np.ndarray:
    """The channels of :func:`grid_features` for slots gathered in any shape ``[...]`` -> ``[..., F]`` float32.

    Batched inference gathers only the context windows' slots from a grid and builds their features here,
    so both paths share one definition of every channel. With ``use_treatments``, passing None for all of
    ``carbs``, ``insulin`` and ``treatments_known`` means no slot has treatment data: the three channels
    stay zero (what zero arrays would give), without gathering and scaling zeros.
    """
    given = [a is not None for a in (carbs, insulin, treatments_known)]
    if use_treatments and any(given) and not all(given):
        raise ValueError("use_treatments needs the carbs, insulin and treatments_known slots (or none of them)")
    available = ~np.isnan(value)
    # Each channel is computed in float64 and written straight into the float32 result: the same
    # values as stacking in float64 and casting, without the float64 copy of the whole tensor. Zeros,
    # so that channels without data need no pass of their own.
    out = np.zeros((*value.shape, 8 if use_treatments else 5), dtype=np.float32)
    out[..., 0] = np.where(available, (value - scaler.glucose_mean) / scaler.glucose_std, 0.0)
    out[..., 1] = available
    out[..., 2] = observed
    # Python's modulo: non-negative for times before 1970 too, so always a valid table row.
    second_of_day = slot_time % 86400
    sin_table, cos_table = _time_of_day_table()
    out[..., 3] = sin_table[second_of_day]
    out[..., 4] = cos_table[second_of_day]
    if use_treatments and all(given):
        out[..., 5] = carbs / scaler.carbs_scale  # type: ignore[operator]
        out[..., 6] = insulin / scaler.insulin_scale  # type: ignore[operator]
        out[..., 7] = treatments_known
    return out


def sufficient_history(observed: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Whether each origin slot has enough recent data to forecast.

    Args:
        observed: ``[S]`` bool per slot.
        slots: ``[B]`` int origin slots.
    Returns:
        ``[B]`` bool: the origin slot holds a real reading and the last hour
        (12 slots including the origin) holds at least MIN_READINGS_LAST_HOUR.
    """
    back = LAST_HOUR_SLOTS - 1
    if slots.shape[0] * LAST_HOUR_SLOTS < observed.shape[0]:
        # Few origins on a long grid (the worker's batches: one origin per subject): count each origin's
        # last 12 slots directly instead of a running sum over every slot.
        idx = slots[:, None] + np.arange(-back, 1)
        recent = observed[np.maximum(idx, 0)]
        if (slots < back).any():
            recent &= idx >= 0  # slots before the grid's start hold nothing
        count = recent.sum(axis=1)
    else:
        csum = np.concatenate([[0], np.cumsum(observed.astype(np.int64))])
        lo = np.maximum(slots - back, 0)
        count = csum[slots + 1] - csum[lo]
    return observed[slots] & (count >= MIN_READINGS_LAST_HOUR)


def sufficient_lattice_history(observed: np.ndarray) -> np.ndarray:
    """:func:`sufficient_history` for origin lattices: ``[M, L]`` bool, the origin last -> ``[M]`` bool."""
    return observed[:, -1] & (observed[:, -LAST_HOUR_SLOTS:].sum(axis=1) >= MIN_READINGS_LAST_HOUR)


class SeriesBank:
    """Concatenated features of many subjects, padded so windows stay inside one subject.

    Attributes:
        features: ``[T, F]`` float32.
        value: ``[T]`` float64 mg/dL, NaN where unavailable.
        observed: ``[T]`` bool.
        offsets: dict key -> global index of the subject's slot 0.
    """

    def __init__(self, config: WindowConfig, scaler: Scaler) -> None:
        self.config = config
        self.scaler = scaler
        self._features: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        self._observed: list[np.ndarray] = []
        self.offsets: dict[str, int] = {}
        self.lengths: dict[str, int] = {}
        self._length = 0
        self.features = np.zeros((0, config.n_features), dtype=np.float32)
        self.value = np.zeros(0)
        self.observed = np.zeros(0, dtype=bool)

    def add(self, key: str, grid: Grid) -> int:
        """Append one subject; returns its global offset (call :meth:`finalize` after)."""
        pad_before = self.config.context_steps
        pad_after = self.config.horizon_steps
        f = grid_features(grid, self.scaler, self.config.use_treatments)
        nf = f.shape[1]
        self._features += [np.zeros((pad_before, nf), np.float32), f, np.zeros((pad_after, nf), np.float32)]
        self._values += [np.full(pad_before, np.nan), grid.value, np.full(pad_after, np.nan)]
        self._observed += [np.zeros(pad_before, bool), grid.observed, np.zeros(pad_after, bool)]
        offset = self._length + pad_before
        self.offsets[key] = offset
        self.lengths[key] = grid.n_slots
        self._length += pad_before + grid.n_slots + pad_after
        return offset

    def finalize(self) -> SeriesBank:
        if self._features:
            self.features = np.concatenate(self._features)
            self.value = np.concatenate(self._values)
            self.observed = np.concatenate(self._observed)
        self._features, self._values, self._observed = [], [], []
        return self

    def windows(self, origins: np.ndarray) -> np.ndarray:
        """Context windows ending at (and including) each origin.

        Args:
            origins: ``[B]`` global slot indices.
        Returns:
            ``[B, L, F]`` float32.
        """
        L = self.config.context_steps
        idx = origins[:, None] + np.arange(-L + 1, 1)[None, :]
        return self.features[idx]

    def targets(self, origins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Future real readings after each origin.

        Returns:
            (values ``[B, H]`` mg/dL with NaN where no real reading, mask ``[B, H]`` bool)
        """
        H = self.config.horizon_steps
        idx = origins[:, None] + np.arange(1, H + 1)[None, :]
        obs = self.observed[idx]
        vals = np.where(obs, self.value[idx], np.nan)
        return vals, obs

    def training_origins(self, keys: list[str] | None = None) -> np.ndarray:
        """Global origin slots usable for training: enough history and >=1 future reading."""
        out = []
        H = self.config.horizon_steps
        for key, off in self.offsets.items():
            if keys is not None and key not in keys:
                continue
            slots = np.arange(off, off + self.lengths[key])
            ok = sufficient_history(self.observed, slots)
            fut = self.observed[slots[:, None] + np.arange(1, H + 1)[None, :]].any(axis=1)
            out.append(slots[ok & fut])
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


@dataclass
class Batch:
    """One training/validation batch (tensors on the requested device).

    Attributes:
        x: ``[B, L, F]`` inputs.
        y: ``[B, H]`` target deltas (normalised), 0 where masked.
        mask: ``[B, H]`` 1.0 where a real future reading exists.
    """

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor


class TrainingWindows:
    """Random-access training windows over a :class:`SeriesBank` (supervised, with targets)."""

    def __init__(self, bank: SeriesBank, origins: np.ndarray) -> None:
        self.bank = bank
        self.origins = origins

    def __len__(self) -> int:
        return int(self.origins.shape[0])

    def batch(self, origins: np.ndarray, device: str = "cpu") -> Batch:
        x = self.bank.windows(origins)
        vals, obs = self.bank.targets(origins)
        last = self.bank.value[origins]
        with np.errstate(invalid="ignore"):
            y = np.where(obs, self.bank.config.encode_target(vals, last, self.bank.scaler), 0.0)
        return Batch(
            x=torch.from_numpy(x).to(device),
            y=torch.from_numpy(y.astype(np.float32)).to(device),
            mask=torch.from_numpy(obs.astype(np.float32)).to(device),
        )

    def iterate(
        self, batch_size: int, rng: np.random.Generator | None, device: str = "cpu", limit: int | None = None
    ) -> Iterator[Batch]:
        """Yield batches; shuffled (and optionally limited to ``limit`` windows) when rng is given."""
        order = self.origins
        if rng is not None:
            order = rng.permutation(order)
        if limit is not None:
            order = order[:limit]
        for i in range(0, order.shape[0], batch_size):
            yield self.batch(order[i : i + batch_size], device)


class InferenceWindows:
    """Unsupervised windows for prediction: inputs only, in origin order."""

    def __init__(self, bank: SeriesBank, origins: np.ndarray) -> None:
        self.bank = bank
        self.origins = origins

    def __len__(self) -> int:
        return int(self.origins.shape[0])

    def iterate(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(origins [B], x [B, L, F])`` chunks."""
        for i in range(0, self.origins.shape[0], batch_size):
            o = self.origins[i : i + batch_size]
            yield o, self.bank.windows(o)
