"""What the care-team pages show. Access rules come from glucoscope.patients.selectors only.

The triage table costs a fixed number of queries whatever the number of patients (asserted in
tests/web/test_dashboard.py): one for the patients with their latest reading, forecast risk and
glucotype as correlated subqueries that walk the (patient, time) indexes, and one grouped sum of
the pre-aggregated per-day range counts (glucoscope/web/models.py) for the current and the
previous 14 UTC days. The live figures (latest reading, predicted-low risk) are never stale; the
14-day figures lag new readings by at most the 5-minute refresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db.models import OuterRef, Q, Subquery, Sum
from django.http import Http404
from django.utils import timezone

from forecasting.glucotypes import latest_glucotype_subquery
from forecasting.models import Forecast, ForecastStatus
from glucoscope.patients.models import Patient, Role, User
from glucoscope.patients.selectors import patients_visible_to
from glucoscope.readings.models import GlucoseReading
from glucoscope.web.analytics import DEFAULT_PERIOD_DAYS, gri_from_counts
from glucoscope.web.models import PatientDayCounts
from glucoscope.web.services import COUNT_FIELDS

# Consensus targets (Battelino et al., Diabetes Care 2019): TBR<70 <4 %, TBR<54 <1 %, TIR >70 %.
TBR_70_TARGET = 4.0
TBR_54_TARGET = 1.0
# A sensor silent this long is flagged stale. Product choice: CGMs send every 5 (Dexcom) or
# 15 (Libre) minutes, so an hour is several missed readings, not a single dropped packet.
STALE_AFTER = timedelta(hours=1)
# A forecast older than this is not "now". Matches the forecaster's own staleness rule (15 min)
# plus one Libre interval.
FORECAST_FRESH_FOR = timedelta(minutes=30)
# "Worsening": GRI up by at least this many points against the previous 14 days. Product choice:
# a quarter of one GRI zone (zones are 20 points wide, Klonoff 2022), so noise does not flag.
WORSENING_GRI_POINTS = 5.0

SORTS = ("need", "risk", "tbr", "gri", "gri_change", "last_reading", "name")
GLUCOTYPE_FILTERS = ("low", "moderate", "severe", "none")
RISK_FILTERS = ("predicted_low", "tbr_above_target", "worsening", "stale")

ERR_CLINICIANS_ONLY = "These pages are for care-team clinicians. Staff use the Django admin; patients use the app."


@dataclass
class TriageRow:
    patient_id: int
    name: str
    username: str
    glucotype: str | None
    last_reading_at: datetime | None
    last_value_mgdl: float | None
    last_flag: str
    last_direction: str
    predicted_low_risk: float | None
    n_readings: int
    tbr_70: float | None
    tbr_54: float | None
    tir: float | None
    gri: float | None
    gri_zone: str | None
    gri_previous: float | None
    stale: bool = False
    flags: list[str] = field(default_factory=list)

    @property
    def gri_change(self) -> float | None:
        if self.gri is None or self.gri_previous is None:
            return None
        return self.gri - self.gri_previous

    @property
    def worsening(self) -> bool:
        change = self.gri_change
        return change is not None and change >= WORSENING_GRI_POINTS

    @property
    def predicted_low(self) -> bool:
        return self.predicted_low_risk is not None and self.predicted_low_risk >= settings.PREDICTED_LOW_RISK_THRESHOLD

    @property
    def tbr_above_target(self) -> bool:
        return (self.tbr_70 or 0) > TBR_70_TARGET or (self.tbr_54 or 0) > TBR_54_TARGET

    @property
    def need(self) -> tuple[Any, ...]:
        """Sort key, most urgent first: imminent low, then hypoglycaemia exposure, then overall risk."""
        return (
            not self.predicted_low,
            -(self.predicted_low_risk or 0.0),
            not self.tbr_above_target,
            not self.stale,
            not self.worsening,
            -(self.gri or 0.0),
        )


def clinician_or_denied(user: Any) -> User:
    """Pages are for clinicians; other signed-in roles get 403 (raised by the view)."""
    if not getattr(user, "is_authenticated", False) or user.role != Role.CLINICIAN:
        raise PermissionError(ERR_CLINICIANS_ONLY)
    return user  # type: ignore[no-any-return]


def patient_for_clinician(*, user: User, patient_id: int) -> Patient:
    """The patient if they consent to one of the clinician's teams; 404 otherwise, so existence does not leak."""
    patient = patients_visible_to(user=user).select_related("user").filter(pk=patient_id).first()
    if patient is None:
        raise Http404("Patient not found.")
    return patient


def triage_rows(
    *,
    user: User,
    now: datetime | None = None,
    sort: str = "need",
    glucotype: str | None = None,
    risk: str | None = None,
) -> list[TriageRow]:
    """The clinician's consenting patients with triage figures, filtered and sorted (most urgent first)."""
    now = now or timezone.now()
    today = now.astimezone(UTC).date()
    current_first = today - timedelta(days=DEFAULT_PERIOD_DAYS - 1)
    previous_first = current_first - timedelta(days=DEFAULT_PERIOD_DAYS)
    visible = patients_visible_to(user=user)
    latest = GlucoseReading.objects.filter(patient=OuterRef("pk"), is_calibration=False).order_by("-measured_at")
    fresh_forecast = Forecast.objects.filter(
        patient=OuterRef("pk"), status=ForecastStatus.OK, origin__gte=now - FORECAST_FRESH_FOR
    ).order_by("-origin", "-created_at")
    patients = visible.select_related("user").annotate(
        last_at=Subquery(latest.values("measured_at")[:1]),
        last_value=Subquery(latest.values("value_mgdl")[:1]),
        last_flag=Subquery(latest.values("sensor_flag")[:1]),
        last_direction=Subquery(latest.values("direction")[:1]),
        low_risk=Subquery(fresh_forecast.values("risk__below_70_30min")[:1]),
        glucotype=latest_glucotype_subquery(),
    )
    # Range counts come from the pre-aggregated day table (glucoscope/web/models.py): 28 rows per patient.
    cur, prev = Q(day__gte=current_first), Q(day__lt=current_first)
    sums = {f"cur_{f}": Sum(f, filter=cur) for f in COUNT_FIELDS} | {f"prev_{f}": Sum(f, filter=prev) for f in COUNT_FIELDS}
    counts: dict[int, dict[str, int]] = {
        row["patient_id"]: {k: v or 0 for k, v in row.items()}  # type: ignore[misc]
        for row in PatientDayCounts.objects.filter(patient__in=visible, day__gte=previous_first, day__lte=today)
        .order_by().values("patient_id").annotate(**sums)
    }
    rows = []
    for p in patients:
        c = counts.get(p.pk, {})
        n = c.get("cur_n", 0)
        gri, zone = gri_from_counts(n=n, very_low=c.get("cur_very_low", 0), low=c.get("cur_low", 0),
                                    high=c.get("cur_high", 0), very_high=c.get("cur_very_high", 0))
        gri_prev, _ = gri_from_counts(n=c.get("prev_n", 0), very_low=c.get("prev_very_low", 0), low=c.get("prev_low", 0),
                                      high=c.get("prev_high", 0), very_high=c.get("prev_very_high", 0))
        pct = 100.0 / n if n else None
        row = TriageRow(
            patient_id=p.pk, name=p.user.get_full_name() or p.user.username, username=p.user.username,
            glucotype=p.glucotype or None,  # type: ignore[attr-defined]
            last_reading_at=p.last_at, last_value_mgdl=p.last_value,  # type: ignore[attr-defined]
            last_flag=p.last_flag or "", last_direction=p.last_direction or "",  # type: ignore[attr-defined]
            predicted_low_risk=p.low_risk,  # type: ignore[attr-defined]
            n_readings=n,
            tbr_70=None if pct is None else (c["cur_very_low"] + c["cur_low"]) * pct,
            tbr_54=None if pct is None else c["cur_very_low"] * pct,
            tir=None if pct is None else c["cur_in_range"] * pct,
            gri=gri, gri_zone=zone, gri_previous=gri_prev,
            stale=p.last_at is None or now - p.last_at > STALE_AFTER,  # type: ignore[attr-defined]
        )
        row.flags = [f for f in RISK_FILTERS if getattr(row, f)]
        rows.append(row)
    if glucotype in GLUCOTYPE_FILTERS:
        rows = [r for r in rows if (r.glucotype or "none") == glucotype]
    if risk in RISK_FILTERS:
        rows = [r for r in rows if getattr(r, risk)]
    return sort_rows(rows, sort=sort)


def sort_rows(rows: list[TriageRow], *, sort: str) -> list[TriageRow]:
    epoch = datetime.min.replace(tzinfo=timezone.get_current_timezone())
    keys: dict[str, Any] = {
        "need": lambda r: r.need,
        "risk": lambda r: -(r.predicted_low_risk or -1.0),
        "tbr": lambda r: -(r.tbr_70 if r.tbr_70 is not None else -1.0),
        "gri": lambda r: -(r.gri if r.gri is not None else -1.0),
        "gri_change": lambda r: -(r.gri_change if r.gri_change is not None else -1000.0),
        # Oldest reading first: the longest-silent sensor needs a call first.
        "last_reading": lambda r: r.last_reading_at or epoch,
        "name": lambda r: r.name.lower(),
    }
    return sorted(rows, key=keys.get(sort, keys["need"]))


def recent_readings(*, patient: Patient, hours: int = 6, now: datetime | None = None) -> list[tuple[datetime, float | None, str]]:
    now = now or timezone.now()
    return list(GlucoseReading.objects.filter(
        patient=patient, is_calibration=False, measured_at__gte=now - timedelta(hours=hours), measured_at__lte=now,
    ).order_by("measured_at").values_list("measured_at", "value_mgdl", "sensor_flag"))


def latest_direction(*, patient: Patient) -> str:
    """The trend arrow of the latest CGM reading, in Nightscout's spelling ('' when none)."""
    row = GlucoseReading.objects.filter(patient=patient, is_calibration=False).order_by("-measured_at").values_list(
        "direction", flat=True).first()
    return row or ""


def notifications_sent(*, patient: Patient, limit: int = 10) -> list[Any] | None:
    """The patient's latest notifications, or None while the notifications app has no such model."""
    try:
        model = apps.get_model("notifications", "Notification")
    except LookupError:
        return None
    return list(model.objects.filter(patient=patient).order_by("-created_at")[:limit])
