"""Clinical analytics selectors shared by the API (api/analytics.py, api/fhir.py) and the care-team pages.

They turn stored readings into the inputs of the pure-numpy metrics in :mod:`glucoscope.metrics`
(which are cross-checked against iglu, docs/metrics.md) and shape the results. No formula is
re-implemented here, except GRI from per-range *counts* for the dashboard, which is the same
Klonoff 2022 formula and is tested against :func:`glucoscope.metrics.glycemia_risk_index`.

Access is checked by the caller (``glucoscope.patients.selectors.patient_get_for_user``).
Glucose is stored in mg/dL; conversion to mmol/L uses 1 mmol/L = 18.016 mg/dL (GUIDE.md §5).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from django.utils import timezone

from glucoscope.metrics import (
    SENSOR_HIGH_MG_DL,
    SENSOR_LOW_MG_DL,
    GlucoseSummary,
    agp_profile,
    compute_summary,
    daily_profiles,
    gri_zone,
)
from glucoscope.metrics.agp import AGP_CITATION
from glucoscope.metrics.consensus import CONSENSUS_CITATION
from glucoscope.metrics.risk import DISCLAIMER as RISK_DISCLAIMER
from glucoscope.metrics.risk import HazardEstimate
from glucoscope.metrics.variability import GRI_CITATION
from glucoscope.patients.models import MGDL_PER_MMOLL, Patient
from glucoscope.readings.models import GlucoseReading, SensorFlag, Treatment

# The consensus reporting period: 14 days (Battelino 2019, data sufficiency).
DEFAULT_PERIOD_DAYS = 14
# Three months of the long-term trend, as consecutive 14-day periods (6 x 14 = 84 days).
TREND_PERIODS = 6

METRIC_KEYS = (
    "start", "end", "days_of_data", "percent_active", "mean_glucose", "sd", "cv", "gmi",
    "time_below_54", "time_below_70", "time_in_range_70_180", "time_above_180", "time_above_250",
    "time_in_tight_range_70_140", "gri", "gri_zone", "lbgi", "hbgi", "mage", "sufficient_data",
)
# Fields that are glucose concentrations (converted with the unit); the rest are %, indices or days.
GLUCOSE_FIELDS = ("mean_glucose", "sd", "mage")


@dataclass(frozen=True)
class GlucoseSeries:
    """One patient's CGM readings in a period: mg/dL (Low/High as 40/400), UTC epoch s, UTC offset s."""

    values_mg_dl: np.ndarray
    epoch_seconds: np.ndarray
    utc_offset_seconds: np.ndarray

    @property
    def n(self) -> int:
        return int(self.values_mg_dl.size)


def default_period(*, patient: Patient, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The last 14 local calendar days including today: from local midnight 13 days ago to now.

    Anchoring at the patient's local midnight keeps the AGP's calendar days whole in their time zone.
    """
    now = now or timezone.now()
    zone = ZoneInfo(patient.time_zone)
    local_today = now.astimezone(zone).date()
    start = datetime.combine(local_today - timedelta(days=DEFAULT_PERIOD_DAYS - 1), time(0), tzinfo=zone)
    return start, now


def glucose_series(*, patient: Patient, start: datetime, end: datetime) -> GlucoseSeries:
    """CGM readings (not fingerstick calibrations) with start <= t < end, in time order."""
    rows = list(
        GlucoseReading.objects.filter(
            patient=patient, measured_at__gte=start, measured_at__lt=end, is_calibration=False
        ).order_by("measured_at").values_list("measured_at", "value_mgdl", "sensor_flag")
    )
    zone = ZoneInfo(patient.time_zone)
    values = np.empty(len(rows))
    epoch = np.empty(len(rows))
    offset = np.empty(len(rows))
    for i, (measured_at, value, flag) in enumerate(rows):
        # Sensor Low/High count at the sensor limits so they stay in the <54 / >250 buckets (docs/metrics.md).
        values[i] = SENSOR_LOW_MG_DL if flag == SensorFlag.LOW else SENSOR_HIGH_MG_DL if flag == SensorFlag.HIGH else value
        epoch[i] = measured_at.timestamp()
        # Each reading's own offset, so a DST change mid-period lands on the right local hour.
        offset[i] = (measured_at.astimezone(zone).utcoffset() or timedelta(0)).total_seconds()
    return GlucoseSeries(values, epoch, offset)


def summarize(series: GlucoseSeries) -> GlucoseSummary:
    # interval None infers the sensor's interval (5 min Dexcom, 15 min Libre) for % active.
    return compute_summary(series.values_mg_dl, series.epoch_seconds, interval_minutes=None,
                           utc_offset_seconds=series.utc_offset_seconds)


def num(value: float | None, digits: int) -> float | None:
    """A plain rounded float: numpy scalars are float subclasses that the JSON renderer would stringify."""
    return None if value is None else round(float(value), digits)


def to_unit(value_mg_dl: float | None, unit: str) -> float | None:
    if value_mg_dl is None:
        return None
    if unit == "mmol/L":
        return num(value_mg_dl / MGDL_PER_MMOLL, 2)
    return num(value_mg_dl, 1)


def metrics_json(*, summary: GlucoseSummary, start: datetime, end: datetime, unit: str) -> dict[str, Any]:
    """Exactly the keys of issue 4 (METRIC_KEYS). Glucose fields in ``unit``; % 0-100; GMI in %."""
    raw = summary.as_dict()
    out: dict[str, Any] = {"start": start.isoformat(), "end": end.isoformat()}
    for key in METRIC_KEYS[2:]:
        value = raw[key]
        if key in GLUCOSE_FIELDS:
            out[key] = to_unit(value, unit)  # type: ignore[arg-type]
        elif isinstance(value, float):
            out[key] = num(value, 2)
        else:
            out[key] = value
    return out


def patient_metrics(*, patient: Patient, start: datetime, end: datetime, unit: str) -> dict[str, Any]:
    return metrics_json(summary=summarize(glucose_series(patient=patient, start=start, end=end)),
                        start=start, end=end, unit=unit)


def patient_agp(*, patient: Patient, start: datetime, end: datetime, unit: str, bin_minutes: int) -> dict[str, Any]:
    """Modal-day percentiles 5/25/50/75/95 per time-of-day bin and the daily profiles (Battelino 2019; Bergenstal 2013)."""
    series = glucose_series(patient=patient, start=start, end=end)
    profile = agp_profile(series.values_mg_dl, series.epoch_seconds, bin_minutes=bin_minutes,
                          utc_offset_seconds=series.utc_offset_seconds)
    daily = daily_profiles(series.values_mg_dl, series.epoch_seconds, bin_minutes=bin_minutes,
                           utc_offset_seconds=series.utc_offset_seconds)

    def conv(x: float) -> float | None:
        return None if not np.isfinite(x) else to_unit(float(x), unit)

    bins = []
    for i, minute in enumerate(profile.bin_start_minutes.tolist()):
        bins.append({
            "minute_of_day": minute,
            "time": f"{minute // 60:02d}:{minute % 60:02d}",
            "n_readings": int(profile.n_readings[i]),
            **{f"p{int(q)}": conv(profile.percentiles[q][i]) for q in profile.percentiles},
        })
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "unit": unit,
        "time_zone": patient.time_zone,
        "bin_minutes": bin_minutes,
        "n_readings": series.n,
        "target_range": [to_unit(profile.target_low, unit), to_unit(profile.target_high, unit)],
        "percentiles": bins,
        "daily_profiles": [
            {"date": str(d), "values": [conv(v) for v in row]}
            for d, row in zip(daily.dates.tolist(), daily.values, strict=True)
        ],
        "citation": AGP_CITATION,
    }


# ------------------------------------------------------------------------------ long-term indicators
def _hazard_json(h: HazardEstimate | None) -> dict[str, Any] | None:
    if h is None:
        return None
    d = asdict(h)
    d["tir_percent"] = num(h.tir_percent, 1)
    d["hazard_ratio"] = num(h.hazard_ratio, 2)
    d["ci95"] = [num(h.ci95[0], 2), num(h.ci95[1], 2)]
    d["ci95_per_10_points"] = list(h.ci95_per_10_points)
    d.pop("disclaimer")
    return d


def indicators_json(summary: GlucoseSummary) -> dict[str, Any]:
    """Beck 2019 HRs with CIs, Lachin 2022 beside them, GMI as an HbA1c estimate and the GRI zone."""
    r = summary.risk_indicators()
    return {
        "is_estimate": True,
        "disclaimer": RISK_DISCLAIMER,
        "time_in_range_70_180": num(summary.time_in_range_70_180, 1),
        "retinopathy_progression_beck_2019": _hazard_json(r.retinopathy_beck),
        "microalbuminuria_beck_2019": _hazard_json(r.microalbuminuria_beck),
        "retinopathy_progression_hba1c_adjusted_lachin_2022": _hazard_json(r.retinopathy_hba1c_adjusted_lachin),
        "hba1c_estimate_gmi": {
            "gmi_percent": num(r.hba1c_estimate.gmi_percent, 1),
            "citation": r.hba1c_estimate.citation, "note": r.hba1c_estimate.note, "is_estimate": True,
        },
        "gri": {"gri": num(r.gri_zone.gri, 1), "zone": r.gri_zone.zone,
                "citation": r.gri_zone.citation, "note": r.gri_zone.note},
        "sufficient_data": summary.sufficient_data,
    }


def period_starts(*, end: datetime, periods: int, days: int = DEFAULT_PERIOD_DAYS) -> list[tuple[datetime, datetime]]:
    """Consecutive periods ending at ``end``, oldest first."""
    return [(end - timedelta(days=days * (k + 1)), end - timedelta(days=days * k)) for k in reversed(range(periods))]


def patient_risk_indicators(*, patient: Patient, end: datetime | None = None) -> dict[str, Any]:
    """Indicators for the latest 14 days plus the 3-month trend (six 14-day periods), from one query."""
    end = end or timezone.now()
    periods = period_starts(end=end, periods=TREND_PERIODS)
    series = glucose_series(patient=patient, start=periods[0][0], end=end)
    trend = []
    for a, b in periods:
        mask = (series.epoch_seconds >= a.timestamp()) & (series.epoch_seconds < b.timestamp())
        s = summarize(GlucoseSeries(series.values_mg_dl[mask], series.epoch_seconds[mask], series.utc_offset_seconds[mask]))
        trend.append({"start": a.isoformat(), "end": b.isoformat(), "n_readings": int(mask.sum()), **indicators_json(s)})
    return {"current": trend[-1], "trend": trend, "period_days": DEFAULT_PERIOD_DAYS,
            "citations": [CONSENSUS_CITATION, GRI_CITATION], "disclaimer": RISK_DISCLAIMER}


def gri_from_counts(*, n: int, very_low: int, low: int, high: int, very_high: int) -> tuple[float | None, str | None]:
    """GRI from reading counts per range (Klonoff, JDST 2022): 3.0 VLow + 2.4 Low + 1.6 VHigh + 0.8 High, cap 100.

    VLow <54, Low 54-69, High 181-250, VHigh >250 mg/dL, each as % of readings; identical to
    :func:`glucoscope.metrics.glycemia_risk_index` on the same readings, but needs only SQL counts.
    """
    if n <= 0:
        return None, None
    pct = 100.0 / n
    gri = min(100.0, 3.0 * very_low * pct + 2.4 * low * pct + 1.6 * very_high * pct + 0.8 * high * pct)
    return gri, gri_zone(gri)


# ------------------------------------------------------------------------------ export
EXPORT_COLUMNS = (
    "record_type", "timestamp_utc", "glucose_mg_dl", "sensor_flag", "trend", "trend_rate_mg_dl_per_min",
    "is_calibration", "source", "device_id", "treatment_kind", "carbs_g", "insulin_units",
    "basal_rate_u_per_h", "duration_minutes", "event_type", "entered_by", "note",
)
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class _Echo:
    def write(self, value: str) -> str:
        return value


def _safe_text(value: str) -> str:
    # Free text opened in a spreadsheet must not run as a formula (OWASP CSV injection).
    return "'" + value if value.startswith(_FORMULA_PREFIXES) else value


def export_rows(*, patient: Patient) -> Iterator[str]:
    """All readings then all treatments as CSV lines, streamed from server-side cursors (no full load)."""
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_COLUMNS)
    readings = GlucoseReading.objects.filter(patient=patient).order_by("measured_at").values_list(
        "measured_at", "value_mgdl", "sensor_flag", "direction", "trend_rate", "is_calibration", "source", "device_id"
    )
    for measured_at, value, flag, direction, rate, calibration, source, device_id in readings.iterator(chunk_size=5000):
        yield writer.writerow(("reading", measured_at.isoformat(), "" if value is None else value, flag, direction,
                               "" if rate is None else rate, int(calibration), source, device_id or "",
                               "", "", "", "", "", "", "", ""))
    treatments = Treatment.objects.filter(patient=patient).order_by("occurred_at").values_list(
        "occurred_at", "kind", "carbs_g", "insulin_units", "basal_rate_u_per_h", "duration_minutes", "event_type",
        "entered_by_label", "note", "source",
    )
    for occurred_at, kind, carbs, insulin, basal, duration, event_type, entered_by, note, source in treatments.iterator(chunk_size=5000):
        def num(x: float | None) -> object:
            return "" if x is None else x
        yield writer.writerow(("treatment", occurred_at.isoformat(), "", "", "", "", "", source, "", kind,
                               num(carbs), num(insulin), num(basal), num(duration), _safe_text(event_type),
                               _safe_text(entered_by), _safe_text(note)))
