"""Input normalisation shared by every metric.

Time contract (read this before passing timestamps)
---------------------------------------------------
Every public function takes ``timestamps`` in one of two forms:

* ``numpy.datetime64`` values (any unit), or anything ``np.asarray(..., dtype="datetime64[s]")``
  accepts. These are taken to be **local wall-clock time of the patient** (naive, no offset),
  i.e. the caller has already converted to the patient's time zone.
* Numbers: **epoch seconds (UTC)**. An optional ``utc_offset_seconds`` (scalar or one value per
  reading, e.g. ``+3600`` for CET) turns them into local time as ``epoch + offset``.

Two clocks are derived:

* ``t_abs``: elapsed-time clock (epoch seconds when given, otherwise the local clock). Used for
  ordering, gaps, % active, MAGE/CONGA/MODD so that a DST change does not create a fake
  1-hour overlap or gap.
* ``t_local``: local wall clock in seconds since 1970-01-01T00:00 local. Used only for
  time-of-day (AGP modal day) and calendar days (daily profiles).

Glucose values are mg/dL. Sensor "Low"/"High" flags should be passed as 40/400 (the usual sensor
limits); :func:`parse_sensor_values` converts the strings. Non-finite and non-positive values
are dropped (they carry no glucose information and would break log-based indices such as LBGI).
Duplicate ``t_abs`` timestamps keep the first reading.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SENSOR_LOW_MG_DL = 40.0
SENSOR_HIGH_MG_DL = 400.0

_LOW_TOKENS = {"low", "lo", "l"}
_HIGH_TOKENS = {"high", "hi", "h"}

FloatArray = npt.NDArray[np.float64]


def parse_sensor_values(
    raw: Iterable[object],
    low_value: float = SENSOR_LOW_MG_DL,
    high_value: float = SENSOR_HIGH_MG_DL,
) -> FloatArray:
    """Convert raw sensor exports (numbers, numeric strings, "Low"/"High") to floats in mg/dL.

    Dexcom/Libre exports write "Low"/"High" when the reading is outside the sensor's range
    (typically <40 or >400 mg/dL). Mapping them to the sensor limits keeps them in the
    <54 and >250 buckets instead of silently dropping the most clinically relevant readings.
    Anything unparseable becomes NaN (and is then ignored by the metrics).
    """
    out: list[float] = []
    for item in raw:
        if item is None:
            out.append(np.nan)
            continue
        if isinstance(item, str):
            token = item.strip().lower()
            if token in _LOW_TOKENS:
                out.append(low_value)
                continue
            if token in _HIGH_TOKENS:
                out.append(high_value)
                continue
            try:
                out.append(float(token))
            except ValueError:
                out.append(np.nan)
            continue
        try:
            out.append(float(item))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            out.append(np.nan)
    return np.asarray(out, dtype=np.float64)


@dataclass(frozen=True)
class CleanSeries:
    """Sorted, de-duplicated, finite readings with both clocks (seconds, float64)."""

    values: FloatArray
    t_abs: FloatArray
    t_local: FloatArray

    @property
    def n(self) -> int:
        return int(self.values.size)


def _to_seconds(timestamps: object) -> tuple[FloatArray, bool]:
    """Return (seconds since epoch, is_datetime_input)."""
    arr = np.asarray(timestamps)
    if arr.dtype.kind == "M":
        sec = arr.astype("datetime64[ns]").astype(np.int64).astype(np.float64) / 1e9
        # NaT becomes the minimum int64; mark it NaN so the reading is dropped.
        sec[np.isnat(arr)] = np.nan
        return sec, True
    if arr.dtype.kind in "iuf":
        return arr.astype(np.float64), False
    if arr.dtype.kind in "OU" or arr.dtype.kind == "S":
        conv = np.asarray(arr, dtype="datetime64[ns]")
        return _to_seconds(conv)[0], True
    raise TypeError(f"Unsupported timestamp dtype {arr.dtype!r}")


def infer_interval_minutes(t_abs: FloatArray, default: float = 5.0) -> float:
    """Most common gap between readings in whole minutes (as iglu's ``CGMS2DayByDay``).

    Used when the caller does not know the device: 5 for Dexcom, 15 for Libre 1 style exports.
    """
    if t_abs.size < 2:
        return default
    diffs = np.rint(np.diff(t_abs) / 60.0).astype(np.int64)
    diffs = diffs[diffs > 0]
    if diffs.size == 0:
        return default
    return float(np.bincount(diffs).argmax())


def clean_series(
    values_mg_dl: Sequence[float] | npt.ArrayLike,
    timestamps: object,
    utc_offset_seconds: float | npt.ArrayLike | None = None,
) -> CleanSeries:
    """Normalise inputs according to the module-level time contract."""
    values = np.asarray(values_mg_dl)
    if values.dtype.kind in "OUS":
        values = parse_sensor_values(values.tolist())
    values = values.astype(np.float64, copy=False).ravel()
    t_sec, is_dt = _to_seconds(timestamps)
    t_sec = t_sec.ravel()
    if values.size != t_sec.size:
        raise ValueError(f"values ({values.size}) and timestamps ({t_sec.size}) differ in length")
    if utc_offset_seconds is None:
        offset: FloatArray = np.zeros_like(t_sec)
    else:
        if is_dt:
            raise ValueError("utc_offset_seconds is only valid with epoch-second timestamps")
        offset = np.broadcast_to(np.asarray(utc_offset_seconds, dtype=np.float64), t_sec.shape)
    keep = np.isfinite(values) & (values > 0) & np.isfinite(t_sec) & np.isfinite(offset)
    values, t_abs, t_local = values[keep], t_sec[keep], (t_sec + offset)[keep]
    if values.size == 0:
        empty = np.empty(0, dtype=np.float64)
        return CleanSeries(empty, empty, empty)
    order = np.argsort(t_abs, kind="stable")
    values, t_abs, t_local = values[order], t_abs[order], t_local[order]
    first = np.ones(t_abs.size, dtype=bool)
    first[1:] = np.diff(t_abs) > 0
    return CleanSeries(values[first], t_abs[first], t_local[first])
