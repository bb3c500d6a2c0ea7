"""Display helpers for the care-team templates: glucose in a unit, trend arrows, percentages."""

from __future__ import annotations

from django import template

from glucoscope.patients.models import MGDL_PER_MMOLL

register = template.Library()

ARROWS = {
    "TripleUp": "⤊", "DoubleUp": "⇈", "SingleUp": "↑", "FortyFiveUp": "↗", "Flat": "→",
    "FortyFiveDown": "↘", "SingleDown": "↓", "DoubleDown": "⇊", "TripleDown": "⤋",
}


@register.filter
def arrow(direction: str) -> str:
    return ARROWS.get(direction or "", "")


@register.filter
def glucose(value_mgdl: float | None, unit: str) -> str:
    """mg/dL as stored, shown in the page's unit (1 mmol/L = 18.016 mg/dL)."""
    if value_mgdl is None:
        return "—"
    return f"{value_mgdl / MGDL_PER_MMOLL:.1f}" if unit == "mmol/L" else f"{value_mgdl:.0f}"


@register.filter
def pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}%"


@register.filter
def num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


@register.filter
def signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.0f}"


@register.filter
def prob(value: float | None) -> str:
    """A probability 0-1 as a whole percentage."""
    return "—" if value is None else f"{100 * value:.0f}%"
