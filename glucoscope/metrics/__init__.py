"""Pure-numpy CGM metrics (no Django): consensus metrics, GRI, LBGI/HBGI, MAGE, CONGA, MODD,
AGP percentiles and transparent long-term risk indicators.

Entry point: :func:`compute_summary`. Time contract: :mod:`glucoscope.metrics._input`.
"""

from ._input import (
    SENSOR_HIGH_MG_DL,
    SENSOR_LOW_MG_DL,
    CleanSeries,
    clean_series,
    infer_interval_minutes,
    parse_sensor_values,
)
from .agp import AGPProfile, DailyProfiles, agp_profile, daily_profiles
from .consensus import (
    cv_percent,
    gmi_percent,
    mean_glucose,
    sd_glucose,
    sufficiency,
    time_above_180,
    time_above_250,
    time_below_54,
    time_below_70,
    time_in_range_70_180,
    time_in_tight_range_70_140,
    wear_statistics,
)
from .risk import (
    GRIZoneIndicator,
    HazardEstimate,
    HbA1cEstimate,
    LongTermRiskIndicators,
    long_term_risk,
)
from .summary import GlucoseSummary, compute_summary
from .variability import (
    GRIResult,
    conga,
    glycemia_risk_index,
    gri_zone,
    lbgi_hbgi,
    mage,
    modd,
    regular_grid,
)

__all__ = [
    "SENSOR_HIGH_MG_DL",
    "SENSOR_LOW_MG_DL",
    "AGPProfile",
    "CleanSeries",
    "DailyProfiles",
    "GRIResult",
    "GRIZoneIndicator",
    "GlucoseSummary",
    "HazardEstimate",
    "HbA1cEstimate",
    "LongTermRiskIndicators",
    "agp_profile",
    "clean_series",
    "compute_summary",
    "conga",
    "cv_percent",
    "daily_profiles",
    "glycemia_risk_index",
    "gmi_percent",
    "gri_zone",
    "infer_interval_minutes",
    "lbgi_hbgi",
    "long_term_risk",
    "mage",
    "mean_glucose",
    "modd",
    "parse_sensor_values",
    "regular_grid",
    "sd_glucose",
    "sufficiency",
    "time_above_180",
    "time_above_250",
    "time_below_54",
    "time_below_70",
    "time_in_range_70_180",
    "time_in_tight_range_70_140",
    "wear_statistics",
]
