"""Risk and variability indices: GRI, LBGI/HBGI, MAGE, CONGA(n), MODD.

MAGE, CONGA and MODD are defined on an evenly spaced series. Like iglu (Broll et al. 2021,
PLoS ONE 16(4):e0248560; Python port ``iglu-python``), readings are first linearly interpolated
onto a grid of ``step`` minutes anchored at midnight of the first day, and only across gaps of at
most ``inter_gap_minutes`` (45 min by default). Keeping the same grid as iglu makes our numbers
reproducible against it (see ``tests/metrics/test_metrics_iglu_crosscheck.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._input import FloatArray

GRI_CITATION = (
    "Klonoff DC, et al. A Glycemia Risk Index (GRI) of Hypoglycemia and Hyperglycemia for "
    "Continuous Glucose Monitoring Validated by Clinician Ratings. J Diabetes Sci Technol "
    "2023;17(5):1226-1242 (online 2022). doi:10.1177/19322968221085273"
)
KOVATCHEV_CITATION = (
    "Kovatchev BP, et al. Diabetes Care 1998;21(11):1870-1875 (LBGI); "
    "Kovatchev BP, et al. Diabetes Care 1997;20(11):1655-1658 (symmetrised BG risk scale)"
)
MAGE_CITATION = (
    "Service FJ, et al. Diabetes 1970;19(9):644-655; moving-average algorithm: Fernandes NJ, et al. "
    "J Diabetes Sci Technol 2022;16(2):576-577. doi:10.1177/19322968211061165"
)
CONGA_CITATION = "McDonnell CM, et al. Diabetes Technol Ther 2005;7(2):253-263. doi:10.1089/dia.2005.7.253"
MODD_CITATION = "Service FJ, Nelson RL. Diabetes Care 1980;3(1):58-62. doi:10.2337/diacare.3.1.58"

DAY_SECONDS = 86400.0


# --------------------------------------------------------------------------------------------
# GRI
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GRIResult:
    """Glycemia Risk Index with its components (Klonoff 2022)."""

    gri: float
    zone: str
    hypo_component: float
    hyper_component: float
    citation: str = GRI_CITATION


def gri_zone(gri: float) -> str:
    """GRI zone A 0-20, B 21-40, C 41-60, D 61-80, E 81-100 (Klonoff 2022).

    The paper's integer bands are applied to the continuous score as upper-inclusive limits
    (20.4 is B): the published zone boundaries are the 20th/40th/... percentiles, not rounding.
    """
    for limit, zone in ((20.0, "A"), (40.0, "B"), (60.0, "C"), (80.0, "D")):
        if gri <= limit:
            return zone
    return "E"


def glycemia_risk_index(values: FloatArray) -> GRIResult | None:
    """GRI = 3.0*VLow + 2.4*Low + 1.6*VHigh + 0.8*High, capped at 100 (Klonoff 2022).

    VLow <54, Low 54-69, High 181-250, VHigh >250 mg/dL, each as % of readings.
    Components: hypo = VLow + 0.8*Low and hyper = VHigh + 0.5*High, so GRI = 3*hypo + 1.6*hyper.
    """
    if values.size == 0:
        return None
    n = values.size
    vlow = 100.0 * np.count_nonzero(values < 54) / n
    low = 100.0 * np.count_nonzero((values >= 54) & (values < 70)) / n
    vhigh = 100.0 * np.count_nonzero(values > 250) / n
    high = 100.0 * np.count_nonzero((values > 180) & (values <= 250)) / n
    hypo = vlow + 0.8 * low
    hyper = vhigh + 0.5 * high
    gri = min(100.0, 3.0 * hypo + 1.6 * hyper)
    return GRIResult(gri=gri, zone=gri_zone(gri), hypo_component=hypo, hyper_component=hyper)


# --------------------------------------------------------------------------------------------
# LBGI / HBGI
# --------------------------------------------------------------------------------------------
def bg_risk(values: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Kovatchev risk transform: f = 1.509*((ln BG)^1.084 - 5.381), r = 10 f^2 (BG in mg/dL)."""
    f = 1.509 * (np.log(values) ** 1.084 - 5.381)
    return f, 10.0 * f * f


def lbgi_hbgi(values: FloatArray) -> tuple[float | None, float | None]:
    """(LBGI, HBGI): mean of r over all readings, counting r only where f<0 (LBGI) / f>0 (HBGI).

    Kovatchev 1997/1998. The symmetric zero of f is at ~112.5 mg/dL.
    """
    if values.size == 0:
        return None, None
    f, r = bg_risk(values)
    lbgi = float(np.where(f < 0, r, 0.0).mean())
    hbgi = float(np.where(f > 0, r, 0.0).mean())
    return lbgi, hbgi


# --------------------------------------------------------------------------------------------
# Regular grid (shared by MAGE, CONGA, MODD)
# --------------------------------------------------------------------------------------------
def regular_grid(
    values: FloatArray,
    t_sec: FloatArray,
    step_minutes: float,
    inter_gap_minutes: float = 45.0,
) -> tuple[FloatArray, FloatArray]:
    """Linear interpolation onto ``k * step`` after midnight of the first day.

    Grid points inside a gap longer than ``inter_gap_minutes`` are NaN (as iglu's
    ``CGMS2DayByDay``), so long sensor-off periods never become straight lines.
    """
    if values.size == 0:
        empty = np.empty(0, dtype=np.float64)
        return empty, empty
    step = step_minutes * 60.0
    day0 = np.floor(t_sec[0] / DAY_SECONDS) * DAY_SECONDS
    k0 = int(np.ceil((t_sec[0] - day0) / step - 1e-9))
    k1 = int(np.floor((t_sec[-1] - day0) / step + 1e-9))
    grid = day0 + np.arange(k0, k1 + 1, dtype=np.float64) * step
    if grid.size == 0:
        return grid, grid.copy()
    out = np.interp(grid, t_sec, values)
    i = np.searchsorted(t_sec, grid, side="right") - 1
    i = np.clip(i, 0, t_sec.size - 1)
    nxt = np.minimum(i + 1, t_sec.size - 1)
    exact = np.abs(t_sec[i] - grid) < 1e-6
    bridged = (nxt > i) & (t_sec[nxt] - t_sec[i] <= inter_gap_minutes * 60.0 + 1e-6)
    out[~(exact | bridged)] = np.nan
    return grid, out


# --------------------------------------------------------------------------------------------
# CONGA / MODD
# --------------------------------------------------------------------------------------------
def conga(values: FloatArray, t_sec: FloatArray, hours: int = 1, interval_minutes: float = 5.0) -> float | None:
    """CONGA(n): sample SD of differences between grid values exactly ``hours`` apart.

    McDonnell 2005. Computed on the interpolated grid (see :func:`regular_grid`); None when
    fewer than two differences exist.
    """
    _, g = regular_grid(values, t_sec, interval_minutes)
    lag = round(60.0 / interval_minutes) * hours
    if lag <= 0 or g.size <= lag:
        return None
    d = g[lag:] - g[:-lag]
    d = d[np.isfinite(d)]
    if d.size < 2:
        return None
    return float(d.std(ddof=1))


def modd(
    values: FloatArray,
    t_sec: FloatArray,
    interval_minutes: float = 5.0,
    lag_days: int = 1,
) -> float | None:
    """MODD: mean absolute difference between grid values 24 h (``lag_days``) apart.

    Service & Nelson 1980. None when no pair 24 h apart exists.
    """
    _, g = regular_grid(values, t_sec, interval_minutes)
    shift = int(lag_days * 24 * 60 / interval_minutes)
    if shift <= 0 or g.size <= shift:
        return None
    d = np.abs(g[shift:] - g[:-shift])
    d = d[np.isfinite(d)]
    return float(d.mean()) if d.size else None


# --------------------------------------------------------------------------------------------
# MAGE (moving-average algorithm, Fernandes 2022, as implemented in iglu)
# --------------------------------------------------------------------------------------------
MAGE_GRID_MINUTES = 5.0  # the MA windows (5, 32) are defined in 5-minute samples
_ZERO = 1e-9  # |MA_short - MA_long| below this counts as "no crossing", as an exact 0 does in iglu


def _rolling_nanmean(x: FloatArray, window: int) -> FloatArray:
    """Trailing mean over ``window`` samples ignoring NaN (pandas ``rolling(min_periods=1)``)."""
    finite = np.isfinite(x)
    cs = np.concatenate(([0.0], np.cumsum(np.where(finite, x, 0.0))))
    cn = np.concatenate(([0], np.cumsum(finite)))
    hi = np.arange(1, x.size + 1)
    lo = np.maximum(hi - window, 0)
    cnt = cn[hi] - cn[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, (cs[hi] - cs[lo]) / np.maximum(cnt, 1), np.nan)


def _crossings(gl: FloatArray, delta: FloatArray) -> tuple[np.ndarray, np.ndarray]:
    """Indices and types (1 = peak interval, 0 = nadir interval) where the two MAs cross.

    Equivalent to iglu's loop: a crossing is where the sign of the MA difference changes with
    respect to the last crossing, NaN/zero differences being skipped. The only exception is a
    start with zero difference, where iglu waits for a crossing between two consecutive valid
    samples.
    """
    n = delta.size
    first_type = 1 if delta[0] > 0 else 0
    d = np.where(np.abs(delta) < _ZERO, np.nan, delta)
    s = np.sign(np.nan_to_num(d, nan=0.0)).astype(np.int8)
    ids: list[int] = [0]
    types: list[int] = [first_type]
    if s[0] != 0:
        ref = 0
    else:
        prim = (s[1:] != 0) & (s[:-1] != 0) & (s[1:] != s[:-1]) & np.isfinite(gl[1:]) & np.isfinite(gl[:-1])
        hits = np.flatnonzero(prim)
        ref = int(hits[0]) + 1 if hits.size else -1
        if ref > 0:
            ids.append(ref)
            types.append(0 if s[ref] < 0 else 1)
    if ref >= 0:
        nz = np.flatnonzero(s[ref:] != 0) + ref
        sv = s[nz]
        change = np.flatnonzero(sv[1:] != sv[:-1]) + 1
        ids.extend(nz[change].tolist())
        types.extend(np.where(sv[change] < 0, 0, 1).tolist())
    last = d[-1]
    ids.append(n - 1)
    types.append(1 if (np.isfinite(last) and last > 0) else 0)
    return np.asarray(ids, dtype=np.int64), np.asarray(types, dtype=np.int8)


def _extrema(gl: FloatArray, ids: np.ndarray, types: np.ndarray) -> FloatArray:
    """Peak/nadir glucose between successive crossings, searching from the previous extremum."""
    m = ids.size - 1
    minmax = np.full(m, np.nan)
    prev = int(ids[0])
    for i in range(m):
        s1 = int(ids[0]) if i == 0 else prev
        seg = gl[s1 : int(ids[i + 1]) + 1]
        if seg.size == 0 or not np.isfinite(seg).any():
            prev = s1
            continue
        k = int(np.nanargmin(seg)) if types[i] == 0 else int(np.nanargmax(seg))
        minmax[i] = seg[k]
        prev = s1 + k
    return minmax


def _mage_rises(mm: FloatArray, sd: float, *, restart_at_peak: bool) -> list[float]:
    """Heights of rises larger than `sd` between turning points `mm` (iglu's MAGE+ scan).

    MAGE- is the same scan on `-mm` with the heights negated; the only difference iglu makes
    is where the look-back restarts after an excursion (at the nadir for MAGE-, not at k).
    """
    heights: list[float] = []
    n = mm.size
    j = prev_j = 0
    while j < n:
        if prev_j > j:
            j += 1
            continue
        delta = mm[j] - mm[prev_j : j + 1]
        max_v = np.max(delta)
        i = int(np.argmax(delta)) + prev_j
        if max_v > sd:
            k = j
            while k < n:
                if mm[k] >= mm[j]:
                    j = k
                if mm[k] - mm[j] < -sd or k == n - 1:
                    heights.append(float(mm[j] - mm[i]))
                    prev_j = j if restart_at_peak else k
                    j = k
                    break
                k += 1
        else:
            j += 1
    return heights


def _mage_segment(gl: FloatArray, short_ma: int, long_ma: int) -> tuple[float, float]:
    """(MAGE+, MAGE-) for one gap-free-enough segment; NaN where not computable."""
    n = gl.size
    if n < 7 or n < short_ma or not np.isfinite(gl).any():
        return np.nan, np.nan
    fin = gl[np.isfinite(gl)]
    if fin.size < 2:
        return np.nan, np.nan
    sd = float(fin.std(ddof=1))
    if sd < 1:
        return np.nan, np.nan
    ma_s = _rolling_nanmean(gl, short_ma)
    ma_l = _rolling_nanmean(gl, long_ma)
    # iglu back-fills the warm-up part of each MA with its first full-window value.
    ma_s[:short_ma] = ma_s[min(short_ma, n) - 1] if short_ma <= n else ma_s[-1]
    ma_l[:long_ma] = ma_l[long_ma - 1] if long_ma <= n else ma_l[-1]
    ids, types = _crossings(gl, ma_s - ma_l)
    mm = _extrema(gl, ids, types)
    plus = _mage_rises(mm, sd, restart_at_peak=False)
    minus = [-height for height in _mage_rises(-mm, sd, restart_at_peak=True)]
    return (
        float(np.mean(plus)) if plus else np.nan,
        float(abs(np.mean(minus))) if minus else np.nan,
    )


def mage(
    values: FloatArray,
    t_sec: FloatArray,
    short_ma: int = 5,
    long_ma: int = 32,
    inter_gap_minutes: float = 45.0,
    max_gap_minutes: float = 180.0,
) -> float | None:
    """MAGE by the moving-average algorithm (Fernandes 2022; iglu ``mage(version="ma")``).

    Steps, mirroring iglu so that results match it: interpolate to a 5-minute grid (gaps
    <= 45 min bridged); split into segments at gaps > 180 min; per segment find crossings of
    the 5- and 32-sample moving averages, take the glucose peak/nadir between crossings, and keep
    nadir-to-peak (MAGE+) and peak-to-nadir (MAGE-) excursions larger than the segment's SD.
    The result is the duration-weighted mean of all available segment MAGE+ and MAGE- values
    ("avg" direction). None when no excursion exceeds 1 SD (e.g. constant data).
    """
    if values.size < 2:
        return None
    if short_ma >= long_ma:
        short_ma, long_ma = long_ma, short_ma
    grid, g = regular_grid(values, t_sec, MAGE_GRID_MINUTES, inter_gap_minutes)
    valid = np.flatnonzero(np.isfinite(g))
    if valid.size == 0:
        return None
    grid, g = grid[valid[0] : valid[-1] + 1], g[valid[0] : valid[-1] + 1]
    valid = valid - valid[0]
    breaks = valid[1:][np.diff(grid[valid]) > max_gap_minutes * 60.0 + 1e-6]
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [g.size]))
    num = 0.0
    den = 0.0
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        seg = g[a:b]
        fin = np.flatnonzero(np.isfinite(seg))
        seg = seg[: fin[-1] + 1]  # iglu trims trailing NaN of each segment
        hours = (seg.size - 1) * MAGE_GRID_MINUTES / 60.0
        for val in _mage_segment(seg, short_ma, long_ma):
            if np.isfinite(val):
                num += val * hours
                den += hours
    if den <= 0:
        return None
    return num / den
