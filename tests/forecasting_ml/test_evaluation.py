from __future__ import annotations

import numpy as np
import pytest

from forecasting.ml.data import build_grid, readings_from_arrays
from forecasting.ml.evaluation import (
    clarke_zones,
    collect_predictions,
    find_origins,
    format_report,
    hypo_detection,
    interval_coverage,
    parkes_zones_type1,
    point_metrics,
    summarise,
)

CLARKE_POINTS = [
    # (reference, prediction, zone)
    (100, 100, "A"),
    (50, 65, "A"),  # both below 70
    (100, 119, "A"),
    (100, 125, "B"),
    (200, 100, "B"),
    (50, 200, "E"),
    (250, 50, "E"),
    (100, 250, "C"),  # overtreatment band: pred >= ref + 110
    (150, 25, "C"),  # pred <= 7/5 ref - 182
    (300, 150, "D"),  # ref >= 240 with pred 70..180
    (50, 100, "D"),  # ref < 58.3, pred 70..180
    (65, 90, "D"),  # 58.3 <= ref <= 70, pred >= 6/5 ref
    (400, 380, "A"),
]


@pytest.mark.parametrize(("ref", "pred", "zone"), CLARKE_POINTS)
def test_clarke_zone_of_known_points(ref: float, pred: float, zone: str) -> None:
    assert clarke_zones(np.array([ref]), np.array([pred]))[0] == zone


PARKES_POINTS = [
    (100, 100, "A"),
    (100, 135, "B"),
    (100, 60, "B"),
    (100, 200, "C"),
    (200, 50, "C"),
    (100, 400, "D"),
    (300, 30, "D"),
    (20, 200, "E"),
    (300, 300, "A"),
]


@pytest.mark.parametrize(("ref", "pred", "zone"), PARKES_POINTS)
def test_parkes_type1_zone_of_known_points(ref: float, pred: float, zone: str) -> None:
    assert parkes_zones_type1(np.array([ref]), np.array([pred]))[0] == zone


def test_point_metrics_values() -> None:
    ref = np.array([100.0, 200.0])
    pred = np.array([110.0, 180.0])
    m = point_metrics(ref, pred)
    assert m["rmse"] == pytest.approx(np.sqrt((100 + 400) / 2))
    assert m["mae"] == pytest.approx(15.0)
    assert m["mard"] == pytest.approx(10.0)
    assert m["clarke_AB"] == 100.0


def test_origins_need_a_reading_five_minutes_before_and_a_target_at_the_horizon() -> None:
    mins = np.array([0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 100, 105, 130, 136], dtype=float)
    r = readings_from_arrays((1_700_000_000 + mins * 60).astype(np.int64), 100 + mins)
    org = find_origins(r, build_grid(r), horizons=(30,))
    # t=0 has no t-5; t=100 has no t-5 (45 is too old); t=105 has a target at 136 (135+/-2.5)
    got = (org.time - 1_700_000_000) // 60
    assert got.tolist() == [5, 10, 15, 105]
    assert org.target[30].tolist() == [135.0, 140.0, 145.0, 236.0]
    assert org.previous.tolist() == [100.0, 105.0, 110.0, 200.0]


def test_hypo_detection_counts_false_alert_episodes_per_day() -> None:
    ref = np.array([60, 60, 100, 100, 100, 100.0])
    pred = np.array([65, 90, 60, 60, 60, 100.0])
    subj = np.array(["a"] * 6, dtype=object)
    t = np.array([0, 300, 600, 900, 10_000, 20_000])
    m = hypo_detection(ref, pred, subj, t, patient_days=2.0)
    assert m["sensitivity"] == 50.0
    assert m["precision"] == 25.0
    # FPs at 600 and 900 s are one episode; 10,000 s is a second one.
    assert m["false_alerts_per_day"] == 1.0


def test_interval_coverage() -> None:
    assert interval_coverage(np.array([1.0, 5.0, 9.0, np.nan]), np.full(4, 2.0), np.full(4, 8.0)) == pytest.approx(
        100 / 3
    )


def test_report_compares_baselines_on_the_same_origins(subjects: dict) -> None:
    data = collect_predictions(subjects)
    rows = summarise(data)
    by = {(r["cohort"], r["horizon"], r["method"]): r for r in rows}
    assert by[("all", 30, "ar2")]["n"] == by[("all", 30, "persistence")]["n"] > 100
    assert "RMSE" in format_report(rows)


def test_report_can_be_grouped_by_age_band(subjects: dict) -> None:
    from forecasting.ml.data import age_band

    assert age_band({"age": "70"}) == "older adult (65+)"
    assert age_band({"age": "15"}) == "adolescent (13-17)"
    assert age_band({}) == "age unknown"
    assert age_band({"age": "35-65"}) == "adult (18-64)"
    assert age_band({"age": "n/a"}) == "age unknown"
    data = collect_predictions(subjects)
    groups = {k: ("older adult (65+)" if i % 2 else "adult (18-64)") for i, k in enumerate(subjects)}
    labels = {r["cohort"] for r in summarise(data, subject_groups=groups)}
    assert labels == {"all", "older adult (65+)", "adult (18-64)"}


def test_diabetes_group_reads_the_metadata_spellings() -> None:
    from forecasting.ml.data import diabetes_group

    assert diabetes_group({"diabetes_type": "T1D"}) == "type 1"
    assert diabetes_group({"diabetes_type": "T1D (simulated)"}) == "type 1"
    assert diabetes_group({"diabetes_type": "Type 2"}) == "type 2"
    assert diabetes_group({"diabetes_type": "Prediabetes"}) == "prediabetes"
    assert diabetes_group({"diabetes_type": "No diabetes"}) == "no diabetes"
    assert diabetes_group({}) == "type unknown"
