"""Simulated cohort (simglucose wrapper) and the treatment channels of stage-2 training (CPU, seconds)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from forecasting.ml.data import SubjectReadings, build_grid, read_cgm_csv
from forecasting.ml.datasets import TREATMENT_START, Scaler, WindowConfig, grid_features
from forecasting.ml.inference import Forecaster
from forecasting.ml.mixed_training import MixedFineTuner, MixedTrainingConfig, widen_for_treatments
from forecasting.ml.networks import PatchGRUForecaster
from forecasting.ml.simulation import PATIENT_NAMES, _meal_plan, split_sim_subjects

from .conftest import synthetic_subject

needs_simglucose = pytest.mark.skipif(
    importlib.util.find_spec("simglucose") is None, reason="simglucose is not installed (pip install simglucose==0.2.11)"
)


def with_treatments(subject_id: str, seed: int, cohort: str = "simglucose"):  # type: ignore[no-untyped-def]
    s = synthetic_subject(subject_id, days=1.5, seed=seed, cohort=cohort)
    carbs = np.zeros(len(s))
    insulin = np.zeros(len(s))
    carbs[::60] = 40.0
    insulin[::60] = 4.0
    s.carbs, s.insulin = carbs, insulin
    return s


@needs_simglucose
def test_a_tiny_simulation_writes_the_shared_csv_format(tmp_path: Path) -> None:
    from forecasting.ml.simulation import simulate_patient

    frame = simulate_patient("adult#001", days=2 / 24, seed=3)
    assert list(frame.columns) == ["subject_id", "timestamp", "glucose_mg_dl", "carbs_g", "insulin_u"]
    assert len(frame) == 24  # one reading per 5 minutes
    assert frame["glucose_mg_dl"].between(40, 400).all() and frame["glucose_mg_dl"].nunique() > 1
    path = tmp_path / "sim.csv"
    frame.to_csv(path, index=False)
    subject = read_cgm_csv(path)["sim-adult#001"]
    grid = build_grid(subject)
    assert grid.has_treatments and grid.observed.all()
    assert np.diff(subject.times).tolist() == [300] * 23


@needs_simglucose
def test_the_simulation_gives_correction_boluses_without_a_meal_when_high() -> None:
    """So that insulin is not always a sign of a meal (a forecaster would learn that insulin raises glucose)."""
    from forecasting.ml.simulation import CORRECTION_ABOVE_MGDL, CORRECTION_GAP_MINUTES, simulate_patient

    frame = simulate_patient("child#001", days=1.0, seed=5)
    bolus_rows = np.flatnonzero(frame["insulin_u"].to_numpy() > 0)
    # No carbohydrate in the 35 minutes up to the bolus (meal boluses come up to 30 min late).
    recent_carbs = frame["carbs_g"].rolling(7, min_periods=1).sum().to_numpy()
    corrections = [row for row in bolus_rows if recent_carbs[row] == 0]
    assert corrections, "seed 5 of child#001 has high stretches long after a meal bolus"
    for row in corrections:
        earlier = bolus_rows[bolus_rows < row]
        if earlier.size:
            assert (row - earlier[-1]) * 5 >= CORRECTION_GAP_MINUTES
        # The decision used the sensor at that minute; the logged reading is at most 5 minutes away.
        assert frame["glucose_mg_dl"].iloc[max(row - 1, 0) : row + 1].max() > CORRECTION_ABOVE_MGDL - 15


@needs_simglucose
def test_the_simulation_is_seeded() -> None:
    from forecasting.ml.simulation import simulate_patient

    a = simulate_patient("child#002", days=1 / 24, seed=5)
    b = simulate_patient("child#002", days=1 / 24, seed=5)
    c = simulate_patient("child#002", days=1 / 24, seed=6)
    assert a.equals(b)
    assert not a["glucose_mg_dl"].equals(c["glucose_mg_dl"])


@needs_simglucose
@pytest.mark.parametrize("seed", [3, 6])
def test_the_published_scenario_boluses_every_meal_and_never_treats_a_low(seed: int) -> None:
    """simglucose's own T1DSimEnv + RandomScenario + BBController: what an evaluator using it as published gets."""
    from forecasting.ml.simulation import (
        PUBLISHED,
        import_simglucose,
        simulate_patient,
        simulate_patient_published,
        subject_id,
    )

    frame = simulate_patient_published("child#001", days=1.0, seed=seed)
    assert list(frame.columns) == ["subject_id", "timestamp", "glucose_mg_dl", "carbs_g", "insulin_u"]
    assert len(frame) == 288 and frame["subject_id"].eq(subject_id("child#001", PUBLISHED)).all()
    assert pd.to_datetime(frame["timestamp"]).diff().dropna().eq(pd.Timedelta(minutes=5)).all()
    meals = np.flatnonzero(frame["carbs_g"].to_numpy() > 0)
    boluses = np.flatnonzero(frame["insulin_u"].to_numpy() > 0)
    assert 2 <= meals.size <= 6
    # BBController answers each meal in the next step: carbohydrate / CR, plus a correction when the
    # sensor it saw read above 150 mg/dL. No carbohydrate is ever eaten for a low.
    assert boluses.tolist() == (meals + 1).tolist()
    controller = import_simglucose()["BBController"]()
    carb_ratio = float(controller.quest.loc[controller.quest.Name == "child#001", "CR"].iloc[0])
    correction = frame["insulin_u"].to_numpy()[boluses] - frame["carbs_g"].to_numpy()[meals] / carb_ratio
    seen = frame["glucose_mg_dl"].to_numpy()[meals]
    assert np.allclose(correction[seen <= 148], 0.0, atol=0.01)
    assert (correction[seen > 152] > 0).all()
    # Its own random stream: the randomised days of the same patient and seed start elsewhere.
    randomised = simulate_patient("child#001", days=1.0, seed=seed)
    assert frame["glucose_mg_dl"].iloc[0] != randomised["glucose_mg_dl"].iloc[0]
    assert frame.equals(simulate_patient_published("child#001", days=1.0, seed=seed))


def test_meal_plans_are_randomised_and_scaled_by_body_size() -> None:
    rng = np.random.default_rng(0)
    days = [_meal_plan(rng, d, 1.0) for d in range(50)]
    minutes = [m.minute % 1440 for day in days for m in day]
    assert 6 * 60 <= min(minutes) and max(minutes) < 23 * 60
    meals = [m for day in days for m in day]
    assert any(m.bolus_factor == 0 for m in meals), "some meals go unbolused"
    assert len({round(m.bolus_factor, 3) for m in meals if m.bolus_factor}) > 10, "carb counting errs"
    small = [m.carbs_g for d in range(50) for m in _meal_plan(np.random.default_rng(0), d, 0.5)]
    assert np.mean(small) < np.mean([m.carbs_g for m in meals])


def test_simulated_split_is_by_patient_and_stratified_by_age_group() -> None:
    keys = [f"simglucose/sim-{n}" for n in PATIENT_NAMES]
    split = split_sim_subjects(keys, seed=0)
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(keys)
    assert not set(split["train"]) & (set(split["test"]) | set(split["val"]))
    for group in ("child", "adolescent", "adult"):
        assert sum(group in k for k in split["test"]) == 2
        assert sum(group in k for k in split["val"]) == 1


def test_a_patient_simulated_under_both_scenarios_stays_on_one_side_of_the_split() -> None:
    from forecasting.ml.simulation import PUBLISHED_SUFFIX, patient_name

    randomised = [f"simglucose/sim-{n}" for n in PATIENT_NAMES]
    both = randomised + [f"{k}{PUBLISHED_SUFFIX}" for k in randomised]
    split = split_sim_subjects(both, seed=0)
    # Adding the published subjects changes nobody's side: earlier versions' held-out patients stay held out.
    alone = split_sim_subjects(randomised, seed=0)
    for part in ("train", "val", "test"):
        assert sorted(k for k in split[part] if not k.endswith(PUBLISHED_SUFFIX)) == sorted(alone[part])
        assert sorted(patient_name(k) for k in split[part] if k.endswith(PUBLISHED_SUFFIX)) == sorted(
            patient_name(k) for k in alone[part])


def test_the_treatment_flag_tells_no_data_from_zero_intake() -> None:
    scaler = Scaler()
    cgm_only = build_grid(synthetic_subject("a", days=0.5))
    no_intake = with_treatments("b", seed=1)
    no_intake.carbs[:] = 0.0
    no_intake.insulin[:] = 0.0
    a = grid_features(cgm_only, scaler, use_treatments=True)[:, TREATMENT_START:]
    b = grid_features(build_grid(no_intake), scaler, use_treatments=True)[:, TREATMENT_START:]
    assert not a.any()
    assert not b[:, :2].any() and (b[:, 2] == 1).all()


def test_widening_keeps_the_glucose_only_function() -> None:
    base = PatchGRUForecaster(n_features=5, context_steps=24, horizon_steps=6, hidden=8, head_hidden=16, patch=6, recent_steps=6)
    wide = widen_for_treatments(base)
    x = torch.randn(4, 24, 5)
    with torch.no_grad():
        same = wide(torch.cat([x, torch.zeros(4, 24, 3)], dim=-1))
        # Equal up to float32 rounding: a wider matmul may sum in another order (CPU kernel dependent).
        torch.testing.assert_close(same, base(x), rtol=0, atol=1e-6)
        wide.embed[0].weight.add_(0.1)  # once trained, treatments change the forecast
        assert not torch.equal(same, wide(torch.cat([x, torch.ones(4, 24, 3)], dim=-1)))


def test_the_head_s_treatment_sums_start_at_zero_and_weigh_a_dose_by_how_long_ago_it_was() -> None:
    base = PatchGRUForecaster(n_features=5, context_steps=24, horizon_steps=6, hidden=8, head_hidden=16, patch=6, recent_steps=6)
    wide = widen_for_treatments(base, treatment_summary=True)
    assert wide.hyperparameters()["treatment_summary"] == 1 and wide.treatment_summary_dim == 8
    x = torch.randn(4, 24, 5)
    treatments = torch.cat([torch.rand(4, 24, 2), torch.ones(4, 24, 1)], dim=-1)
    with torch.no_grad():
        # Even with treatments given, the new inputs start at zero weight: the stage-1 function.
        torch.testing.assert_close(wide(torch.cat([x, treatments], dim=-1)), base(x), rtol=0, atol=1e-6)
        # A dose at the origin counts fully; one 30 min (6 slots) earlier by e^-1 in the 30-min sum.
        assert wide.decay[-1].tolist() == [1.0, 1.0, 1.0, 1.0]
        assert abs(float(wide.decay[-7, 0]) - math.exp(-1.0)) < 1e-6
        wide.head[0].weight[:, -wide.treatment_summary_dim:] = 0.5
        assert not torch.equal(wide(torch.cat([x, treatments], dim=-1)), base(x))
        # Without treatment data the sums are zero, whatever their weights: still the stage-1 function.
        torch.testing.assert_close(wide(torch.cat([x, torch.zeros(4, 24, 3)], dim=-1)), base(x), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="treatment_summary needs"):
        PatchGRUForecaster(n_features=5, treatment_summary=1)


def _fine_tune_tiny(**config: Any) -> tuple[PatchGRUForecaster, MixedFineTuner, dict[str, SubjectReadings], dict[str, SubjectReadings]]:
    """Stage 2 on two tiny real and two tiny simulated subjects (seeded): the base, the tuner and the data."""
    torch.manual_seed(0)
    window = WindowConfig(context_steps=24, horizon_steps=24)
    base = PatchGRUForecaster(n_features=5, context_steps=24, horizon_steps=24, hidden=8, head_hidden=16, patch=6, recent_steps=6)
    real = {f"r{i}": synthetic_subject(f"r{i}", days=1.5, seed=i, cohort="real") for i in range(2)}
    sim = {f"s{i}": with_treatments(f"s{i}", seed=10 + i) for i in range(2)}
    cfg = MixedTrainingConfig(epochs=2, samples_per_epoch=512, batch_size=128, val_samples=200, num_threads=1, **config)
    tuner = MixedFineTuner(cfg, progress=False).fit(base, window, Scaler(), real, {"rv": real["r1"]}, sim, {"sv": sim["s1"]})
    return base, tuner, real, sim


def test_stage_two_fine_tunes_on_real_and_simulated_windows() -> None:
    _base, tuner, real, sim = _fine_tune_tiny()
    assert tuner.window_.use_treatments and tuner.network_.n_features == 8
    assert [h.epoch for h in tuner.history_] == [0, 1, 2]
    best = tuner.history_[tuner.best_epoch_]
    assert best.val_loss_real + best.val_loss_sim == min(h.val_loss_real + h.val_loss_sim for h in tuner.history_)
    forecaster = Forecaster(tuner.network_, tuner.window_, tuner.scaler_, tuner.calibrators_)
    out = forecaster.forecast_patients([real["r0"], sim["s0"]])
    assert [o.status for o in out] == ["ok", "ok"]


def test_training_only_the_treatment_inputs_leaves_glucose_only_forecasts_unchanged() -> None:
    base, tuner, _real, _sim = _fine_tune_tiny(treatment_inputs_only=True, learning_rate=1e-2, sim_fraction=0.5)
    assert {h.val_loss_real for h in tuner.history_} == {tuner.history_[0].val_loss_real}
    x = torch.randn(3, 24, 5)
    with torch.no_grad():
        torch.testing.assert_close(tuner.network_(torch.cat([x, torch.zeros(3, 24, 3)], dim=-1)), base(x), rtol=0, atol=1e-6)
        if tuner.best_epoch_:  # the treatment weights did move
            assert not torch.equal(base(x), tuner.network_(torch.cat([x, torch.ones(3, 24, 3)], dim=-1)))


def test_the_cohort_refuses_sensors_for_the_randomised_days_and_unknown_scenarios(tmp_path: Path) -> None:
    from forecasting.ml.simulation import RANDOMISED, iter_cohort

    with pytest.raises(ValueError, match="randomised days always use GuardianRT"):
        next(iter_cohort(("adult#001",), 0.01, 0, tmp_path, scenario=RANDOMISED, sensor_name="Dexcom"))
    with pytest.raises(ValueError, match="unknown scenario"):
        next(iter_cohort(("adult#001",), 0.01, 0, tmp_path, scenario="weekend"))  # type: ignore[arg-type]
