"""Server-side charts with matplotlib (no JavaScript, no CDN): the recent trace with its forecast band,
and the AGP report in its standard layout (Battelino et al., Diabetes Care 2019; Bergenstal et al.,
Diabetes Technol Ther 2013):

1. time-in-ranges stacked bar against the consensus goals;
2. statistics: dates, days, % active, mean, GMI, CV (with the sufficiency flag beside them);
3. the modal day: median, 25-75 and 5-95 percentile bands and the 70-180 mg/dL target band;
4. daily profiles.

Uses the object-oriented ``Figure`` API (never pyplot), so rendering is thread-safe in a web worker.
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta, tzinfo
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers; set before any figure exists

import matplotlib.dates as mdates
import numpy as np
from matplotlib.figure import Figure

from glucoscope.metrics import AGPProfile, DailyProfiles, GlucoseSummary
from glucoscope.patients.models import MGDL_PER_MMOLL

# AGP colours as in the standard report: very low dark red, low red, target green, high yellow, very high orange.
RANGE_COLOURS = ("#8b0000", "#e53935", "#43a047", "#fdd835", "#fb8c00")
# Consensus goals per range (Battelino 2019), shown beside the bar.
GOALS = ("<1%", "<4%", ">70%", "<25%", "<5%")
RANGE_LABELS = ("Very low <54", "Low 54–69", "Target 70–180", "High 181–250", "Very high >250")


def _scale(unit: str) -> float:
    return 1.0 / MGDL_PER_MMOLL if unit == "mmol/L" else 1.0


def _target_band(ax: Any, unit: str) -> None:
    k = _scale(unit)
    ax.axhspan(70 * k, 180 * k, color="#43a047", alpha=0.10, lw=0)
    for y in (70 * k, 180 * k):
        ax.axhline(y, color="#2e7d32", lw=0.8)
    ax.axhline(54 * k, color="#8b0000", lw=0.5, ls=":")
    ax.axhline(250 * k, color="#fb8c00", lw=0.5, ls=":")


def to_svg(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    return buf.getvalue()


def to_pdf(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # A fixed creation date keeps the bytes reproducible; the report's own date is printed on it.
    fig.savefig(buf, format="pdf", metadata={"Creator": "GlucoScope", "CreationDate": None})
    return buf.getvalue()


def recent_figure(*, readings: list[tuple[datetime, float | None, str]], forecast_points: list[dict[str, Any]],
                  origin: datetime | None, unit: str, zone: tzinfo, hours: int) -> Figure:
    """The last hours of CGM with the latest forecast: median line and its 80% band (p10–p90)."""
    k = _scale(unit)
    fig = Figure(figsize=(9, 3.2))
    ax = fig.add_subplot()
    _target_band(ax, unit)
    t = mdates.date2num([m for m, _, _ in readings])
    v = [(40.0 if f == "low" else 400.0 if f == "high" else value) * k for m, value, f in readings]  # type: ignore[operator]
    if len(t):
        ax.plot(t, v, "o", ms=2.5, color="#1a237e", label="CGM")
    if origin is not None and forecast_points:
        ft = mdates.date2num([origin + timedelta(minutes=p["minutes_ahead"]) for p in forecast_points])
        ax.fill_between(ft, [p["p10"] * k for p in forecast_points], [p["p90"] * k for p in forecast_points],
                        color="#7e57c2", alpha=0.25, lw=0, label="forecast 80% band (p10–p90)")
        ax.plot(ft, [p["p50"] * k for p in forecast_points], color="#4527a0", lw=1.5, label="forecast median")
    ax.set_ylim(0, 400 * k)
    ax.set_ylabel(f"Glucose ({unit})")
    ax.xaxis.set_major_locator(mdates.HourLocator(tz=zone))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=zone))
    ax.set_title(f"Last {hours} h and forecast (an estimate, not a diagnosis)", fontsize=10, loc="left")
    ax.grid(alpha=0.3)
    if len(t) or forecast_points:
        ax.legend(fontsize=7, loc="upper left")
    else:
        ax.text(0.5, 0.5, "No readings in this period", transform=ax.transAxes, ha="center")
    return fig


def _fmt(value: float | None, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def agp_figure(*, title: str, summary: GlucoseSummary, profile: AGPProfile, daily: DailyProfiles, unit: str,
               start: datetime, end: datetime, zone: tzinfo) -> Figure:
    """One A4 page: header and statistics, time-in-ranges bar, modal day, and up to 14 daily profiles."""
    k = _scale(unit)
    fig = Figure(figsize=(8.27, 11.69))
    grid = fig.add_gridspec(4, 7, height_ratios=[1.25, 2.2, 0.9, 0.9], hspace=0.55, wspace=0.25,
                            left=0.07, right=0.97, top=0.93, bottom=0.04)
    fig.suptitle(f"Ambulatory Glucose Profile — {title}", x=0.07, ha="left", fontsize=13, fontweight="bold")

    # 2. Statistics (left of the top row) with the sufficiency flag beside the numbers.
    stats = fig.add_subplot(grid[0, :4])
    stats.axis("off")
    mean = None if summary.mean_glucose is None else summary.mean_glucose * k
    lines = [
        f"{start.astimezone(zone):%d %b %Y} – {end.astimezone(zone):%d %b %Y}  ({_fmt(summary.days_of_data, '{:.1f}')} days)",
        f"% time CGM active: {_fmt(summary.percent_active, '{:.1f}')}%",
        f"Mean glucose: {_fmt(mean, '{:.1f}' if unit == 'mmol/L' else '{:.0f}')} {unit}",
        f"GMI (HbA1c estimate): {_fmt(summary.gmi, '{:.1f}')}%",
        f"Glucose variability (CV): {_fmt(summary.cv, '{:.1f}')}%  (goal ≤36%)",
        f"GRI: {_fmt(summary.gri, '{:.0f}')}  zone {summary.gri_zone or '—'}",
        ("Data sufficient (≥14 days, ≥70% active)" if summary.sufficient_data
         else "Insufficient data (<14 days or <70% active)"),
    ]
    for i, line in enumerate(lines):
        stats.text(0, 1 - i * 0.15, line, fontsize=9, va="top",
                   color="#b71c1c" if (i == len(lines) - 1 and not summary.sufficient_data) else "black")

    # 1. Time in ranges: one stacked bar with the goals beside it.
    bar = fig.add_subplot(grid[0, 4:])
    tbr54 = summary.time_below_54 or 0.0
    parts = [
        tbr54, (summary.time_below_70 or 0.0) - tbr54, summary.time_in_range_70_180 or 0.0,
        (summary.time_above_180 or 0.0) - (summary.time_above_250 or 0.0), summary.time_above_250 or 0.0,
    ]
    bottom = 0.0
    for i, (share, colour, label, goal) in enumerate(zip(parts, RANGE_COLOURS, RANGE_LABELS, GOALS, strict=True)):
        bar.bar(0, share, bottom=bottom, color=colour, width=0.6)
        # Labels sit at fixed heights, as on the standard AGP report, so thin segments never overlap.
        bar.text(0.45, 10 + 20 * i, f"{label}: {share:.1f}%  (goal {goal})", fontsize=7, va="center")
        bottom += share
    bar.set_xlim(-0.4, 2.6)
    bar.set_ylim(0, 100)
    bar.axis("off")
    bar.set_title("Time in ranges", fontsize=9, loc="left")

    # 3. Modal day.
    ax = fig.add_subplot(grid[1, :])
    _target_band(ax, unit)
    hours = (profile.bin_start_minutes + profile.bin_minutes / 2) / 60.0
    p = {q: profile.percentiles[q] * k for q in profile.percentiles}
    ax.fill_between(hours, p[5.0], p[95.0], color="#90caf9", alpha=0.6, lw=0, label="5–95%")
    ax.fill_between(hours, p[25.0], p[75.0], color="#1e88e5", alpha=0.6, lw=0, label="25–75%")
    ax.plot(hours, p[50.0], color="#0d47a1", lw=2, label="median")
    ax.set_xlim(0, 24)
    ax.set_xticks(range(0, 25, 3), [f"{h:02d}:00" for h in range(0, 25, 3)])
    ax.set_ylim(0, 350 * k)
    ax.set_ylabel(f"Glucose ({unit})")
    ax.set_title("Modal day (all days overlaid; target 70–180 mg/dL shaded)", fontsize=9, loc="left")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)

    # 4. Daily profiles: the last 14 days, one small panel each.
    days = list(zip(daily.dates.tolist(), daily.values, strict=True))[-14:]
    x = (daily.bin_start_minutes + daily.bin_minutes / 2) / 60.0
    for i in range(14):
        dax = fig.add_subplot(grid[2 + i // 7, i % 7])
        dax.axhspan(70 * k, 180 * k, color="#43a047", alpha=0.12, lw=0)
        dax.set_xlim(0, 24)
        dax.set_ylim(0, 350 * k)
        dax.set_xticks([])
        dax.set_yticks([])
        if i < len(days):
            date, row = days[i]
            dax.plot(x, np.asarray(row) * k, color="#0d47a1", lw=0.8)
            dax.set_title(f"{date:%a %d %b}", fontsize=6)
    fig.text(0.07, 0.015, "GlucoScope. Figures are computed from CGM data for decision support; estimates are "
             "labelled as such and nothing here is a diagnosis. Sources: Battelino 2019; Bergenstal 2013/2018; Klonoff 2022.",
             fontsize=6, color="#555")
    return fig
