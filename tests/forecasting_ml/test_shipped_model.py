"""The shipped default model: loads safely, is small, and works on real data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecasting.ml.artifacts import load_artifact
from forecasting.ml.data import frame_to_subjects, read_cgm_csv
from forecasting.ml.evaluation import collect_predictions
from forecasting.ml.inference import DEFAULT_ARTIFACT, STATUS_OK, Forecaster
from forecasting.ml.pipeline import evaluate_subjects

from .conftest import synthetic_subject


def test_shipped_model_loads_with_checksum_and_is_under_10_mb() -> None:
    _network, meta = load_artifact(DEFAULT_ARTIFACT)
    weights = DEFAULT_ARTIFACT.parent / meta["weights_file"]
    assert weights.stat().st_size < 10 * 1024 * 1024
    assert meta["version"] and meta["metrics_held_out"] and meta["scaler"]
    assert not set(meta["split"]["test"]) & set(meta["split"]["train"])


def test_shipped_model_forecasts_a_patient() -> None:
    out = Forecaster.load().forecast_patients([synthetic_subject("p", days=0.5, seed=1)])[0]
    assert out.status == STATUS_OK
    assert len(out.points) == 24
    assert all(40 <= p.p10 <= p.p50 <= p.p90 <= 400 for p in out.points)


def test_shipped_model_beats_persistence_on_one_real_held_out_subject(shared_data_dir: Path) -> None:
    forecaster = Forecaster.load()
    key = next(k for k in forecaster.metadata["split"]["test"] if k.startswith("AZT1D/"))
    subjects = read_cgm_csv(shared_data_dir / "AZT1D.csv.gz", cohort="AZT1D")
    sid = key.split("/", 1)[1]
    rows, _ = evaluate_subjects({key: subjects[sid]}, forecaster, horizons=(30,))
    rmse = {r["method"]: r["rmse"] for r in rows if r["cohort"] == "all" and "rmse" in r}
    assert rmse["model"] < rmse["persistence"]
    assert np.isfinite(rmse["ar2"])


def test_shipped_model_beats_ar2_on_held_out_people_without_type_1_diabetes(shared_data_dir: Path) -> None:
    # A model that had only seen type 1 glucose drifted towards type 1 levels here and lost to AR2 at 60 min.
    forecaster = Forecaster.load()
    held_out = [k for k in forecaster.metadata["split"]["test"] if k.startswith("Colas_2019/")]
    assert len(held_out) >= 10
    subjects = read_cgm_csv(shared_data_dir / "Colas_2019.csv.gz", cohort="Colas_2019")
    rows, _ = evaluate_subjects({k: subjects[k.split("/", 1)[1]] for k in held_out}, forecaster)
    rmse = {(r["horizon"], r["method"]): r["rmse"] for r in rows if r["cohort"] == "all" and "rmse" in r}
    assert rmse[(30, "model")] < rmse[(30, "ar2")]
    assert rmse[(60, "model")] < rmse[(60, "ar2")]


@pytest.mark.skipif(importlib.util.find_spec("simglucose") is None, reason="simglucose is not installed")
def test_shipped_model_does_not_assume_a_low_will_be_treated() -> None:
    """On held-out virtual patients run with simglucose as published (no one treats a low), the 80 % band
    must hold a fair share of the readings below 70 mg/dL. v1.3.0, trained only on days with rescue
    carbohydrate, held 33 % at 30 min and 8 % at 60 min here; v1.4.1 holds 61 % and 54 %."""
    from forecasting.ml.simulation import PATIENT_NAMES, patient_name, simulate_patient_published

    forecaster = Forecaster.load()
    held_out = sorted({patient_name(k) for k in forecaster.metadata["sim_split"]["test"]})
    assert len(held_out) == 6
    # Seeds no cohort of simulate_cohort draws (seed * 1000 + patient index for --seed 0 and 11).
    days = [simulate_patient_published(name, 2.0, seed=99_000 + PATIENT_NAMES.index(name)) for name in held_out]
    subjects = frame_to_subjects(pd.concat(days, ignore_index=True))
    data = collect_predictions(subjects, predict_fn=forecaster.predict_origin_quantiles, config=forecaster.config,
                               scaler=forecaster.scaler, horizons=(30, 60))
    for horizon, least in ((30, 0.5), (60, 0.4)):
        low = data.target[horizon] < 70
        p10, p90 = data.interval[horizon]
        assert low.sum() > 200
        inside = (data.target[horizon] >= p10) & (data.target[horizon] <= p90)
        assert inside[low].mean() >= least, f"{horizon} min: band holds {inside[low].mean():.0%} of readings below 70"
