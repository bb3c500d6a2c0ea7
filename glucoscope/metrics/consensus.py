"""International-consensus CGM metrics.

Source: Battelino T, et al. "Clinical Targets for Continuous Glucose Monitoring Data
Interpretation: Recommendations From the International Consensus on Time in Range."
Diabetes Care 2019;42(8):1593-1603. doi:10.2337/dci19-0028.

All "time in X" values are the percentage of *readings* (0-100) in the range, which equals the
percentage of time for an evenly sampled sensor. Ranges follow the consensus wording:
below 54 means ``< 54``; below 70 is ``< 70`` and *includes* the <54 readings; in range is
``70 <= g <= 180``; above 180 is ``> 180`` and *includes* >250; above 250 is ``> 250``;
tight range is ``70 <= g <= 140``.
"""

from __future__ import annotations

import numpy as np

from ._input import FloatArray

CONSENSUS_CITATION = "Battelino T, et al. Diabetes Care 2019;42(8):1593-1603. doi:10.2337/dci19-0028"
GMI_CITATION = "Bergenstal RM, et al. Diabetes Care 2018;41(11):2275-2280. doi:10.2337/dc18-1581"

# Sufficiency rule of the consensus: at least 14 days with >= 70 % of possible readings.
MIN_DAYS = 14.0
MIN_PERCENT_ACTIVE = 70.0


def _pct(mask: np.ndarray) -> float | None:
    return float(mask.mean() * 100.0) if mask.size else None


def time_below_54(values: FloatArray) -> float | None:
    """% readings < 54 mg/dL (level 2 hypoglycaemia). Battelino 2019."""
    return _pct(values < 54)


def time_below_70(values: FloatArray) -> float | None:
    """% readings < 70 mg/dL, including < 54 (total TBR). Battelino 2019."""
    return _pct(values < 70)


def time_in_range_70_180(values: FloatArray) -> float | None:
    """% readings 70-180 mg/dL inclusive (TIR). Battelino 2019."""
    return _pct((values >= 70) & (values <= 180))


def time_above_180(values: FloatArray) -> float | None:
    """% readings > 180 mg/dL, including > 250 (total TAR). Battelino 2019."""
    return _pct(values > 180)


def time_above_250(values: FloatArray) -> float | None:
    """% readings > 250 mg/dL (level 2 hyperglycaemia). Battelino 2019."""
    return _pct(values > 250)


def time_in_tight_range_70_140(values: FloatArray) -> float | None:
    """% readings 70-140 mg/dL inclusive (TITR).

    Not one of the 2019 consensus targets; reported as the commonly used "tight range"
    (e.g. Dunn TC, et al. Diabetes Technol Ther 2024;26(3):203-210, doi:10.1089/dia.2023.0490)
    using the consensus bucket boundaries of Battelino 2019.
    """
    return _pct((values >= 70) & (values <= 140))


def mean_glucose(values: FloatArray) -> float | None:
    """Arithmetic mean glucose, mg/dL. Battelino 2019."""
    return float(values.mean()) if values.size else None


def sd_glucose(values: FloatArray) -> float | None:
    """Sample standard deviation (ddof=1, as iglu/R ``sd``), mg/dL. Battelino 2019.

    None for fewer than two readings because the sample SD is undefined there.
    """
    return float(values.std(ddof=1)) if values.size >= 2 else None


def cv_percent(values: FloatArray) -> float | None:
    """Coefficient of variation = 100 * SD / mean (%); target <= 36 %. Battelino 2019."""
    sd = sd_glucose(values)
    mean = mean_glucose(values)
    if sd is None or mean is None or mean == 0:
        return None
    return 100.0 * sd / mean


def gmi_percent(mean_mg_dl: float | None) -> float | None:
    """Glucose Management Indicator (%) = 3.31 + 0.02392 * mean glucose [mg/dL].

    Bergenstal RM, et al. "Glucose Management Indicator (GMI): A New Term for Estimating A1C
    From Continuous Glucose Monitoring." Diabetes Care 2018;41(11):2275-2280.
    """
    if mean_mg_dl is None:
        return None
    return 3.31 + 0.02392 * mean_mg_dl


def wear_statistics(t_abs: FloatArray, interval_minutes: float) -> tuple[float, float]:
    """Return (days_of_data, percent_active) from sorted elapsed-time seconds.

    days_of_data is the covered span including the last reading's own interval, so 14 full days
    of 5-minute readings (00:00 .. 23:55) give exactly 14.0. percent_active counts distinct
    sampling slots of ``interval_minutes`` with at least one reading over the slots in that span,
    which stays <= 100 % even if the sensor sampled faster than declared. Consensus reporting
    item "days CGM worn" and "% time CGM is active" (Battelino 2019).
    """
    if t_abs.size == 0:
        return 0.0, 0.0
    step = interval_minutes * 60.0
    rel = t_abs - t_abs[0]
    n_slots = int(np.floor(rel[-1] / step + 1e-9)) + 1
    slots = np.floor(rel / step + 1e-9).astype(np.int64)
    # Slots are sorted because t_abs is; counting changes is a cheap unique().
    occupied = 1 + int(np.count_nonzero(np.diff(slots)))
    days = (rel[-1] + step) / 86400.0
    return float(days), float(min(100.0, 100.0 * occupied / n_slots))


def sufficiency(days_of_data: float, percent_active: float) -> tuple[bool, str]:
    """Data-sufficiency flag: >= 14 days and >= 70 % active (Battelino 2019).

    The flag is reported *beside* the metrics; it never suppresses them.
    """
    reasons = []
    if days_of_data < MIN_DAYS:
        reasons.append(f"{days_of_data:.1f} days of data (< {MIN_DAYS:.0f})")
    if percent_active < MIN_PERCENT_ACTIVE:
        reasons.append(f"{percent_active:.1f}% time active (< {MIN_PERCENT_ACTIVE:.0f}%)")
    if reasons:
        return False, "insufficient: " + "; ".join(reasons)
    return True, "sufficient"
