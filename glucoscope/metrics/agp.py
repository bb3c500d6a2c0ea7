"""Ambulatory Glucose Profile (AGP): modal-day percentiles and daily profiles.

Sources: Battelino T, et al. Diabetes Care 2019;42(8):1593-1603 (AGP as the standard report:
median, 25-75 and 5-95 percentile bands over a 24-hour modal day with the 70-180 target band,
plus daily profiles); Bergenstal RM, et al. Diabetes Technol Ther 2013;15(3):198-211
("Recommendations for standardizing glucose reporting and analysis to optimize clinical
decision making in diabetes: the Ambulatory Glucose Profile").

Time contract: see :mod:`glucoscope.metrics._input`. The modal day and calendar days use the
patient's **local** wall clock, so the caller must pass local times (or epoch seconds plus the
UTC offset per reading).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ._input import FloatArray, clean_series

AGP_CITATION = (
    "Battelino T, et al. Diabetes Care 2019;42(8):1593-1603; "
    "Bergenstal RM, et al. Diabetes Technol Ther 2013;15(3):198-211"
)
AGP_PERCENTILES: tuple[float, ...] = (5.0, 25.0, 50.0, 75.0, 95.0)


@dataclass(frozen=True)
class AGPProfile:
    """Percentiles per time-of-day bin. ``percentiles[q]`` has one value per bin (NaN if empty)."""

    bin_minutes: int
    bin_start_minutes: npt.NDArray[np.int64]
    n_readings: npt.NDArray[np.int64]
    percentiles: dict[float, FloatArray]
    target_low: float = 70.0
    target_high: float = 180.0
    citation: str = AGP_CITATION

    @property
    def p5(self) -> FloatArray:
        return self.percentiles[5.0]

    @property
    def p25(self) -> FloatArray:
        return self.percentiles[25.0]

    @property
    def p50(self) -> FloatArray:
        return self.percentiles[50.0]

    @property
    def p75(self) -> FloatArray:
        return self.percentiles[75.0]

    @property
    def p95(self) -> FloatArray:
        return self.percentiles[95.0]


@dataclass(frozen=True)
class DailyProfiles:
    """One row per local calendar day: mean glucose per time-of-day bin (NaN where no data)."""

    bin_minutes: int
    dates: npt.NDArray[np.datetime64]
    bin_start_minutes: npt.NDArray[np.int64]
    values: FloatArray = field(repr=False)
    citation: str = AGP_CITATION


def _grouped_percentiles(
    bins: np.ndarray, values: FloatArray, n_bins: int, qs: tuple[float, ...]
) -> tuple[npt.NDArray[np.int64], dict[float, FloatArray]]:
    """Percentiles per group without a Python loop over bins.

    Sort by (bin, value) once, then index each group's order statistics; the interpolation is
    numpy's default "linear" method (R type 7), so each bin equals ``np.percentile`` of its values.
    """
    order = np.lexsort((values, bins))
    v = values[order]
    counts = np.bincount(bins, minlength=n_bins).astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    out: dict[float, FloatArray] = {}
    has = counts > 0
    for q in qs:
        pos = (q / 100.0) * (counts - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(counts - 1, 0))
        frac = pos - lo
        res = np.full(n_bins, np.nan)
        idx_lo = (starts + lo)[has]
        idx_hi = (starts + hi)[has]
        res[has] = v[idx_lo] + (v[idx_hi] - v[idx_lo]) * frac[has]
        out[q] = res
    return counts, out


def _tod_bins(t_local: FloatArray, bin_minutes: int) -> tuple[np.ndarray, int]:
    if 1440 % bin_minutes:
        raise ValueError("bin_minutes must divide 1440 (e.g. 5, 15, 30, 60)")
    minute_of_day = np.mod(t_local, 86400.0) / 60.0
    return (minute_of_day // bin_minutes).astype(np.int64), 1440 // bin_minutes


def agp_profile(
    values_mg_dl: npt.ArrayLike,
    timestamps: object,
    bin_minutes: int = 15,
    utc_offset_seconds: float | npt.ArrayLike | None = None,
    percentiles: tuple[float, ...] = AGP_PERCENTILES,
) -> AGPProfile:
    """Modal-day (24 h) percentile profile; default 15-minute bins and 5/25/50/75/95 %.

    All days are folded onto one local day; each bin's percentiles are computed over every
    reading whose local time falls in it. Bins without readings are NaN.
    """
    s = clean_series(values_mg_dl, timestamps, utc_offset_seconds)
    bins, n_bins = _tod_bins(s.t_local, bin_minutes)
    counts, pct = _grouped_percentiles(bins, s.values, n_bins, tuple(float(q) for q in percentiles))
    return AGPProfile(
        bin_minutes=bin_minutes,
        bin_start_minutes=np.arange(n_bins, dtype=np.int64) * bin_minutes,
        n_readings=counts,
        percentiles=pct,
    )


def daily_profiles(
    values_mg_dl: npt.ArrayLike,
    timestamps: object,
    bin_minutes: int = 15,
    utc_offset_seconds: float | npt.ArrayLike | None = None,
) -> DailyProfiles:
    """Per-local-day traces (mean of readings in each bin), for the AGP "daily profiles" panel."""
    s = clean_series(values_mg_dl, timestamps, utc_offset_seconds)
    bins, n_bins = _tod_bins(s.t_local, bin_minutes)
    if s.n == 0:
        return DailyProfiles(
            bin_minutes=bin_minutes,
            dates=np.empty(0, dtype="datetime64[D]"),
            bin_start_minutes=np.arange(n_bins, dtype=np.int64) * bin_minutes,
            values=np.empty((0, n_bins)),
        )
    day = np.floor(s.t_local / 86400.0).astype(np.int64)
    day0 = int(day.min())
    n_days = int(day.max()) - day0 + 1
    flat = (day - day0) * n_bins + bins
    sums = np.bincount(flat, weights=s.values, minlength=n_days * n_bins)
    cnt = np.bincount(flat, minlength=n_days * n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mat = np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan).reshape(n_days, n_bins)
    dates = (np.arange(n_days, dtype=np.int64) + day0).astype("datetime64[D]")
    return DailyProfiles(
        bin_minutes=bin_minutes,
        dates=dates,
        bin_start_minutes=np.arange(n_bins, dtype=np.int64) * bin_minutes,
        values=mat,
    )
