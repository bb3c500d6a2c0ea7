"""Training, artifacts and inference on tiny seeded synthetic data (CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from forecasting.ml.artifacts import ERROR_CHECKSUM, load_artifact, save_artifact
from forecasting.ml.data import (
    SPECTRUM_COHORTS,
    TYPE1_COHORTS,
    SubjectReadings,
    build_grid,
    off_grid,
    read_cgm_csv,
)
from forecasting.ml.datasets import WindowConfig
from forecasting.ml.inference import STATUS_INSUFFICIENT, STATUS_OK, Forecaster
from forecasting.ml.pipeline import evaluate_subjects, forecast_csv
from forecasting.ml.risk import RISK_EVENTS
from forecasting.ml.training import QuantileForecasterTrainer, TrainingConfig, split_subjects

from .conftest import synthetic_subject

TINY = TrainingConfig(
    epochs=2,
    batch_size=128,
    samples_per_epoch=1024,
    val_samples=256,
    hidden=8,
    head_hidden=16,
    num_threads=1,
    ridge_samples=500,
)
WINDOW = WindowConfig(context_steps=24, horizon_steps=24)


@pytest.fixture(scope="module")
def trained() -> QuantileForecasterTrainer:
    torch.set_num_threads(1)
    train = {f"t{i}": synthetic_subject(f"t{i}", days=1.5, seed=i) for i in range(3)}
    val = {"v0": synthetic_subject("v0", days=1.0, seed=9)}
    return QuantileForecasterTrainer(TINY, WINDOW, progress=False).fit(train, val)


def _save(trained: QuantileForecasterTrainer, directory: Path) -> Path:
    return save_artifact(directory, "forecaster", trained.network_, "patch_gru", trained.metadata() | {"version": "t"})


def test_training_is_reproducible_with_the_same_seed(trained: QuantileForecasterTrainer) -> None:
    train = {f"t{i}": synthetic_subject(f"t{i}", days=1.5, seed=i) for i in range(3)}
    val = {"v0": synthetic_subject("v0", days=1.0, seed=9)}
    again = QuantileForecasterTrainer(TINY, WINDOW, progress=False).fit(train, val)
    for a, b in zip(trained.network_.state_dict().values(), again.network_.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [h.val_loss for h in trained.history_] == [h.val_loss for h in again.history_]


def test_split_is_by_subject_and_stratified_by_cohort() -> None:
    subjects = {f"{c}/{i}": synthetic_subject(str(i), days=0.2, seed=i, cohort=c) for c in "ab" for i in range(10)}
    split = split_subjects(subjects, seed=1)
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(subjects)
    assert not set(split["train"]) & set(split["test"])
    for c in "ab":
        assert any(k.startswith(c) for k in split["test"]) and any(k.startswith(c) for k in split["val"])


def test_adding_other_cohorts_leaves_the_type_1_split_unchanged() -> None:
    type1 = {
        f"{c}/{i}": synthetic_subject(str(i), days=0.1, seed=i, cohort=c) for c in TYPE1_COHORTS for i in range(12)
    }
    spectrum = {
        f"{c}/{i}": synthetic_subject(str(i), days=0.1, seed=i, cohort=c) for c in SPECTRUM_COHORTS for i in range(9)
    }
    alone = split_subjects(type1, seed=0)
    together = split_subjects(type1 | spectrum, seed=0)
    for part in ("train", "val", "test"):
        assert [k for k in together[part] if k in type1] == alone[part]
        assert any(k.split("/")[0] in SPECTRUM_COHORTS for k in together[part])


def test_save_load_round_trip_gives_identical_forecasts(trained: QuantileForecasterTrainer, tmp_path: Path) -> None:
    path = _save(trained, tmp_path)
    meta = json.loads(path.read_text())
    for key in ("version", "hyperparameters", "scaler", "training_data", "sha256", "window_config"):
        assert key in meta
    loaded = Forecaster.load(path)
    patient = synthetic_subject("p", days=0.5, seed=3)
    a = trained.to_forecaster().forecast_patients([patient])[0]
    b = loaded.forecast_patients([patient])[0]
    assert [p.p50 for p in a.points] == pytest.approx([p.p50 for p in b.points], abs=1e-4)
    assert (tmp_path / "forecaster.pt").stat().st_size < 10 * 1024 * 1024


def test_loading_refuses_weights_with_a_wrong_checksum(trained: QuantileForecasterTrainer, tmp_path: Path) -> None:
    path = _save(trained, tmp_path)
    with open(tmp_path / "forecaster.pt", "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ValueError, match=ERROR_CHECKSUM.split(":")[0]):
        load_artifact(path)


def test_batched_patient_forecasts_and_insufficient_data(trained: QuantileForecasterTrainer) -> None:
    f = trained.to_forecaster()
    good = synthetic_subject("good", days=0.5, seed=1)
    sparse = SubjectReadings("sparse", good.times[-2:], good.glucose[-2:], good.flags[-2:])
    empty = SubjectReadings("empty", good.times[:0], good.glucose[:0], good.flags[:0])
    stale_now = int(good.times[-1]) + 3600
    out = f.forecast_patients([good, sparse, empty])
    assert [r.status for r in out] == [STATUS_OK, STATUS_INSUFFICIENT, STATUS_INSUFFICIENT]
    assert len(out[0].points) == 24 and out[0].points[-1].minutes_ahead == 120
    assert all(p.p10 <= p.p50 <= p.p90 for p in out[0].points)
    assert set(out[0].risk) == {e.name for e in RISK_EVENTS}
    assert all(0.0 <= v <= 1.0 for v in out[0].risk.values())
    assert f.forecast_patients([good], now=stale_now)[0].status == STATUS_INSUFFICIENT


def test_forecast_is_causal_future_readings_do_not_change_it(trained: QuantileForecasterTrainer) -> None:
    f = trained.to_forecaster()
    full = synthetic_subject("x", days=1.0, seed=5)
    cut = 200
    past = SubjectReadings("x", full.times[:cut], full.glucose[:cut], full.flags[:cut])
    altered = full.glucose.copy()
    altered[cut:] = 300.0
    changed = SubjectReadings("x", full.times, altered, full.flags)
    bank_a, _ = f.make_bank({"x": past})
    bank_b, _ = f.make_bank({"x": changed})
    origins = np.arange(150, cut)
    qa = f.predict_bank(bank_a, bank_a.offsets["x"] + origins)
    qb = f.predict_bank(bank_b, bank_b.offsets["x"] + origins)
    assert np.allclose(qa, qb)


def test_evaluation_report_includes_model_baselines_and_calibration(trained: QuantileForecasterTrainer) -> None:
    subjects = {"e": synthetic_subject("e", days=1.0, seed=7)}
    rows, calibration = evaluate_subjects(subjects, trained.to_forecaster())
    methods = {r["method"] for r in rows}
    assert {"model", "ar2", "persistence", "ridge"} <= methods
    assert all("coverage80" in r for r in rows if r["method"] == "model")
    assert set(calibration) == {e.name for e in RISK_EVENTS}


def test_forecast_csv_forecasts_three_minute_readings_from_their_own_time(
    trained: QuantileForecasterTrainer, tmp_path: Path
) -> None:
    path = _save(trained, tmp_path)
    t = 1_700_000_000 + 180 * np.arange(200)
    g = 140 + 60 * np.sin(np.arange(200) / 15)
    inp = tmp_path / "three.csv"
    inp.write_text("subject_id,timestamp,glucose_mg_dl\n" + "".join(
        f"a,{np.datetime64(int(x), 's').astype(str).replace('T', ' ')},{v:.1f}\n" for x, v in zip(t, g, strict=True)
    ))
    out = tmp_path / "out.csv"
    forecast_csv(inp, out, horizons=(30,), model_path=path)
    rows = pd.read_csv(out)
    forecaster = Forecaster.load(path)
    readings = read_cgm_csv(inp)["a"]
    q, enough = forecaster.predict_readings(readings, np.arange(len(readings)))
    # Every reading with an hour of history is an origin, each forecast from its own lattice.
    assert len(rows) == enough.sum() > 150
    off = off_grid(readings.times, build_grid(readings))[enough]
    assert 0.3 < off.mean() < 0.8
    written = rows["glucose_mg_dl"].to_numpy()
    np.testing.assert_allclose(written[off], q[enough, 5, 1][off], atol=0.051)
    # The others come from the grid, whose slot time is up to a minute from the reading's own.
    np.testing.assert_allclose(written[~off], q[enough, 5, 1][~off], atol=1.0)
    # The evaluation scores every reading too (not one per 5-minute slot), with the same forecasts.
    rows_eval, _ = evaluate_subjects({"a": readings}, forecaster, horizons=(30,))
    n = {r["method"]: r["n"] for r in rows_eval if r["cohort"] == "all" and "n" in r}
    assert n["model"] == n["ar2"] == 200 - 1 - 10  # no t-5 for the first, no t+30 for the last 10
    assert rows["glucose_mg_dl"].nunique() > 0.9 * len(rows)


def test_evaluation_report_audits_by_diabetes_type(trained: QuantileForecasterTrainer) -> None:
    subjects = {f"e{i}": synthetic_subject(f"e{i}", days=1.0, seed=7 + i) for i in range(3)}
    for readings, kind in zip(subjects.values(), ("T1D", "T2D", "No diabetes"), strict=True):
        readings.info = {"diabetes_type": kind}
    rows, _ = evaluate_subjects(subjects, trained.to_forecaster(), horizons=(30,))
    model_n = {r["cohort"]: r["n"] for r in rows if r["method"] == "model"}
    assert {"type 1", "type 2", "no diabetes"} <= set(model_n)
    assert model_n["type 1"] + model_n["type 2"] + model_n["no diabetes"] == model_n["all"]


def test_forecast_csv_keeps_timestamps_as_written(trained: QuantileForecasterTrainer, tmp_path: Path) -> None:
    path = _save(trained, tmp_path)
    s = synthetic_subject("a", days=0.3, seed=2)
    lines = ["subject_id,timestamp,glucose_mg_dl"]
    for t, g in zip(s.times, s.glucose, strict=True):
        ts = np.datetime64(int(t), "s").astype(str).replace("T", " ")
        lines.append(f"a,{ts},{g:.0f}")
    lines.insert(5, "a,1970-01-01 00:00:00,Low")  # unsorted, far in the past
    lines.append(lines[-1])  # exact duplicate row
    inp = tmp_path / "in.csv"
    inp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.csv"
    n = forecast_csv(inp, out, horizons=(30, 60), model_path=path)
    rows = out.read_text().splitlines()
    assert rows[0] == "subject_id,timestamp,horizon_min,glucose_mg_dl,p10,p90,p_below_70"
    body = [r.split(",") for r in rows[1:]]
    assert len(body) == 2 * n and n > 0
    written = {r.split(",")[1] for r in lines[1:]}
    assert {b[1] for b in body} <= written
    assert {b[2] for b in body} == {"30", "60"}
    assert len({(b[1], b[2]) for b in body}) == len(body)  # the duplicated row is one origin


def test_personalisation_needs_seven_days_and_reports_later_day_rmse(trained: QuantileForecasterTrainer) -> None:
    from forecasting.ml.personalise import FineTuneConfig, fine_tune, personalisation_gain

    f = trained.to_forecaster()
    short = synthetic_subject("short", days=2.0, seed=1)
    with pytest.raises(ValueError, match="at least 7 days"):
        fine_tune(f, short)
    long = synthetic_subject("long", days=9.5, seed=4)
    rows = personalisation_gain(f, {"long": long}, config=FineTuneConfig(steps=5, batch_size=32))
    assert len(rows) == 1
    assert rows[0]["population_rmse30"] > 0 and rows[0]["personal_rmse30"] > 0
    # The shared model must not be modified by fine-tuning.
    before = {k: v.clone() for k, v in f.network.state_dict().items()}
    fine_tune(f, long, FineTuneConfig(steps=3, batch_size=16))
    assert all(torch.equal(before[k], v) for k, v in f.network.state_dict().items())


def test_undefined_metrics_are_saved_as_null_so_the_metadata_is_strict_json(trained: QuantileForecasterTrainer, tmp_path: Path) -> None:
    # Precision is undefined for a group where the model raised no alert; PostgreSQL's json type refuses NaN.
    meta = trained.metadata() | {"version": "t", "metrics_held_out": [{"precision": float("nan"), "rmse": 12.5}]}
    path = save_artifact(tmp_path, "forecaster", trained.network_, "patch_gru", meta)
    text = path.read_text()
    assert "NaN" not in text
    _network, loaded = load_artifact(path)
    assert loaded["metrics_held_out"] == [{"precision": None, "rmse": 12.5}]
