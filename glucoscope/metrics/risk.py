"""Transparent long-term risk *indicators* derived from CGM metrics.

These are population-level estimates transferred to one person, never a diagnosis or an
individual prognosis. Each indicator carries its source, the assumption it rests on and a
disclaimer, so the UI can show exactly where the number comes from.

Sources
-------
* Beck RW, et al. "Validation of Time in Range as an Outcome Measure for Diabetes Clinical
  Trials." Diabetes Care 2019;42(3):400-405. doi:10.2337/dc18-1444. DCCT data, TIR from
  7-point fingerstick profiles: per 10 percentage points *lower* TIR, hazard of retinopathy
  progression HR 1.64 (95% CI 1.51-1.78) and of microalbuminuria HR 1.40 (1.25-1.56).
* Lachin 2022, HbA1c-adjusted reanalysis of the same DCCT data: retinopathy HR 1.12
  (1.00-1.26) per 10 points lower TIR. Shown beside Beck because the unadjusted HR largely
  reflects mean glycaemia. (Figures as specified in the project guide, section 7; the full
  bibliographic reference still has to be checked against the paper.)
* Bergenstal RM, et al. Diabetes Care 2018;41(11):2275-2280 (GMI as an HbA1c estimate).
* Klonoff DC, et al. J Diabetes Sci Technol 2022 (GRI zone).
* Battelino 2019 consensus: TIR 70 % corresponds to HbA1c ~7 %; each 10 % TIR ~0.6-0.8 % HbA1c.
"""

from __future__ import annotations

from dataclasses import dataclass

from .consensus import GMI_CITATION
from .variability import GRI_CITATION

BECK_CITATION = "Beck RW, et al. Diabetes Care 2019;42(3):400-405. doi:10.2337/dc18-1444"
LACHIN_CITATION = "Lachin JM, et al. DCCT/EDIC HbA1c-adjusted reanalysis of TIR and retinopathy (2022)"
TIR_HBA1C_CITATION = "Battelino T, et al. Diabetes Care 2019;42(8):1593-1603 (TIR 70% ~ HbA1c 7%)"

REFERENCE_TIR_PERCENT = 70.0
DISCLAIMER = (
    "Estimate transferred from population studies (DCCT, type 1 diabetes, fingerstick-derived TIR); "
    "not a diagnosis or an individual prognosis. Discuss with a clinician."
)


@dataclass(frozen=True)
class HazardEstimate:
    """Relative hazard versus a person at the reference TIR (70 %), with the CI propagated.

    ``hazard_ratio = hr_per_10_points ** ((reference_tir - tir) / 10)``: values > 1 mean higher
    estimated hazard than at the reference, < 1 lower. The CI uses the published per-10-point
    bounds raised to the same exponent (so it ignores uncertainty in the patient's own TIR).
    """

    outcome: str
    tir_percent: float
    reference_tir_percent: float
    hr_per_10_points_lower_tir: float
    ci95_per_10_points: tuple[float, float]
    hazard_ratio: float
    ci95: tuple[float, float]
    adjusted_for_hba1c: bool
    citation: str
    disclaimer: str = DISCLAIMER
    is_estimate: bool = True


@dataclass(frozen=True)
class HbA1cEstimate:
    """GMI presented as an HbA1c estimate (%), with the TIR-based rule of thumb beside it."""

    gmi_percent: float | None
    citation: str = GMI_CITATION
    note: str = (
        "GMI estimates HbA1c from mean CGM glucose; a lab HbA1c may differ by 0.5 points or more. "
        "Rule of thumb: TIR 70% ~ HbA1c 7%, each 10% TIR ~ 0.6-0.8% HbA1c (" + TIR_HBA1C_CITATION + ")."
    )
    is_estimate: bool = True


@dataclass(frozen=True)
class GRIZoneIndicator:
    gri: float | None
    zone: str | None
    citation: str = GRI_CITATION
    note: str = "Zone A (lowest risk) to E (highest), from clinician ratings of CGM tracings."


@dataclass(frozen=True)
class LongTermRiskIndicators:
    """Bundle shown to clinicians/patients; every member cites its source."""

    retinopathy_beck: HazardEstimate | None
    microalbuminuria_beck: HazardEstimate | None
    retinopathy_hba1c_adjusted_lachin: HazardEstimate | None
    hba1c_estimate: HbA1cEstimate
    gri_zone: GRIZoneIndicator
    disclaimer: str = DISCLAIMER


def hazard_estimate(
    tir_percent: float,
    outcome: str,
    hr_per_10: float,
    ci_per_10: tuple[float, float],
    citation: str,
    adjusted_for_hba1c: bool,
    reference_tir_percent: float = REFERENCE_TIR_PERCENT,
) -> HazardEstimate:
    """Log-linear hazard relative to ``reference_tir_percent`` (the Cox model's own scale)."""
    k = (reference_tir_percent - tir_percent) / 10.0
    lo, hi = ci_per_10[0] ** k, ci_per_10[1] ** k
    return HazardEstimate(
        outcome=outcome,
        tir_percent=tir_percent,
        reference_tir_percent=reference_tir_percent,
        hr_per_10_points_lower_tir=hr_per_10,
        ci95_per_10_points=ci_per_10,
        hazard_ratio=hr_per_10**k,
        ci95=(min(lo, hi), max(lo, hi)),
        adjusted_for_hba1c=adjusted_for_hba1c,
        citation=citation,
    )


def long_term_risk(
    tir_percent: float | None,
    gmi: float | None,
    gri: float | None,
    gri_zone: str | None,
) -> LongTermRiskIndicators:
    """Build the indicator bundle; TIR-based hazards are None when TIR is unavailable."""
    if tir_percent is None:
        retino = micro = adj = None
    else:
        retino = hazard_estimate(
            tir_percent,
            "retinopathy progression",
            1.64,
            (1.51, 1.78),
            BECK_CITATION,
            False,
        )
        micro = hazard_estimate(
            tir_percent,
            "development of microalbuminuria",
            1.40,
            (1.25, 1.56),
            BECK_CITATION,
            False,
        )
        adj = hazard_estimate(
            tir_percent,
            "retinopathy progression (HbA1c-adjusted)",
            1.12,
            (1.00, 1.26),
            LACHIN_CITATION,
            True,
        )
    return LongTermRiskIndicators(
        retinopathy_beck=retino,
        microalbuminuria_beck=micro,
        retinopathy_hba1c_adjusted_lachin=adj,
        hba1c_estimate=HbA1cEstimate(gmi_percent=gmi),
        gri_zone=GRIZoneIndicator(gri=gri, zone=gri_zone),
    )
