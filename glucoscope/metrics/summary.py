"""Single entry point: :func:`compute_summary` -> :class:`GlucoseSummary`.

Every field is a plain ``float``/``int``/``bool``/``str``/``None`` so the API layer can serialise
it directly (``dataclasses.asdict`` or :meth:`GlucoseSummary.as_dict`). Missing/undefined values
are ``None`` (never NaN). Sources are cited per function in ``consensus``/``variability``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy.typing as npt

from ._input import clean_series, infer_interval_minutes
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
from .risk import LongTermRiskIndicators, long_term_risk
from .variability import conga, glycemia_risk_index, lbgi_hbgi, mage, modd


@dataclass(frozen=True)
class GlucoseSummary:
    """CGM summary over one period (percentages are 0-100, glucose in mg/dL, GMI in %)."""

    days_of_data: float
    percent_active: float
    mean_glucose: float | None
    sd: float | None
    cv: float | None
    gmi: float | None
    time_below_54: float | None
    time_below_70: float | None
    time_in_range_70_180: float | None
    time_above_180: float | None
    time_above_250: float | None
    time_in_tight_range_70_140: float | None
    gri: float | None
    gri_zone: str | None
    gri_hypo_component: float | None
    gri_hyper_component: float | None
    lbgi: float | None
    hbgi: float | None
    mage: float | None
    conga: float | None
    modd: float | None
    sufficient_data: bool

    def as_dict(self) -> dict[str, float | str | bool | None]:
        return asdict(self)

    def risk_indicators(self) -> LongTermRiskIndicators:
        """Long-term risk indicators (estimates, with citations) derived from this summary."""
        return long_term_risk(self.time_in_range_70_180, self.gmi, self.gri, self.gri_zone)


def compute_summary(
    values_mg_dl: npt.ArrayLike,
    timestamps: object,
    interval_minutes: float | None = 5.0,
    utc_offset_seconds: float | npt.ArrayLike | None = None,
    conga_hours: int = 1,
) -> GlucoseSummary:
    """Compute every summary metric for one patient and period.

    ``values_mg_dl``: readings in mg/dL (sensor Low/High as 40/400, or the strings, see
    :func:`glucoscope.metrics.parse_sensor_values`); NaN/non-positive values are ignored.
    ``timestamps``: see the time contract in :mod:`glucoscope.metrics._input` (local
    ``datetime64`` or epoch seconds with optional ``utc_offset_seconds``).
    ``interval_minutes``: the sensor's nominal sampling interval (5 Dexcom, 15 Libre) used for
    % active and the CONGA/MODD grid; ``None`` infers it as the most common gap.
    ``conga`` is CONGA(``conga_hours``), CONGA(1) by default.

    The sufficiency flag (>= 14 days and >= 70 % active, Battelino 2019) is reported beside the
    numbers and never hides them.
    """
    s = clean_series(values_mg_dl, timestamps, utc_offset_seconds)
    v = s.values
    if interval_minutes is None:
        interval_minutes = infer_interval_minutes(s.t_abs)
    days, active = wear_statistics(s.t_abs, interval_minutes)
    mean = mean_glucose(v)
    gri = glycemia_risk_index(v)
    lbgi, hbgi = lbgi_hbgi(v)
    return GlucoseSummary(
        days_of_data=days,
        percent_active=active,
        mean_glucose=mean,
        sd=sd_glucose(v),
        cv=cv_percent(v),
        gmi=gmi_percent(mean),
        time_below_54=time_below_54(v),
        time_below_70=time_below_70(v),
        time_in_range_70_180=time_in_range_70_180(v),
        time_above_180=time_above_180(v),
        time_above_250=time_above_250(v),
        time_in_tight_range_70_140=time_in_tight_range_70_140(v),
        gri=None if gri is None else gri.gri,
        gri_zone=None if gri is None else gri.zone,
        gri_hypo_component=None if gri is None else gri.hypo_component,
        gri_hyper_component=None if gri is None else gri.hyper_component,
        lbgi=lbgi,
        hbgi=hbgi,
        mage=mage(v, s.t_abs),
        conga=conga(v, s.t_abs, hours=conga_hours, interval_minutes=interval_minutes),
        modd=modd(v, s.t_abs, interval_minutes=interval_minutes),
        sufficient_data=sufficiency(days, active)[0],
    )
