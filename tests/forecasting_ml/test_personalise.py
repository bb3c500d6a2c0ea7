"""Personal output layers: tuning on one patient's history, storage form, and use inside a batch.

The batched use is checked against an independent reference: a copy of the network whose output layer
is replaced by the patient's, run on that patient alone.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from forecasting.ml.data import SubjectReadings, batch_from_subjects
from forecasting.ml.datasets import Scaler, WindowConfig
from forecasting.ml.inference import Forecaster
from forecasting.ml.networks import PatchGRUForecaster, PersonalOutputLayer, RowOutputLayers, build_network
from forecasting.ml.personalise import FineTuneConfig, fine_tune, personalisation_gain

from .conftest import synthetic_subject

FAST = FineTuneConfig(steps=60, batch_size=64, check_every=10)


@pytest.fixture
def forecaster() -> Forecaster:
    config = WindowConfig()
    torch.manual_seed(3)
    network = build_network("patch_gru", {"n_features": config.n_features, "hidden": 16, "head_hidden": 16})
    return Forecaster(network, config, Scaler())


def _network(forecaster: Forecaster) -> PatchGRUForecaster:
    assert isinstance(forecaster.network, PatchGRUForecaster)
    return forecaster.network


def _random_layer(forecaster: Forecaster, seed: int) -> PersonalOutputLayer:
    weight = _network(forecaster).output_layer.weight.detach().numpy()
    rng = np.random.default_rng(seed)
    return PersonalOutputLayer(
        (weight + rng.normal(0, 0.05, weight.shape)).astype(np.float32),
        rng.normal(0, 0.05, weight.shape[0]).astype(np.float32),
    )


def _with_layer(forecaster: Forecaster, layer: PersonalOutputLayer) -> Forecaster:
    """The reference: a copy of the network with the patient's layer put in place of the population one."""
    network = copy.deepcopy(_network(forecaster))
    with torch.no_grad():
        network.output_layer.weight.copy_(torch.from_numpy(layer.weight))
        network.output_layer.bias.copy_(torch.from_numpy(layer.bias))
    return Forecaster(network, forecaster.config, forecaster.scaler, forecaster.calibrators)


def test_rows_with_their_own_layer_get_it_and_the_others_keep_the_population_layer(forecaster: Forecaster) -> None:
    patients = [synthetic_subject(f"p{i}", days=0.5, seed=i) for i in range(5)]
    # Row 2 is too sparse to forecast: the rows after it must still get their own layers, not a neighbour's.
    patients[2] = SubjectReadings("sparse", patients[2].times[:2], patients[2].glucose[:2], patients[2].flags[:2])
    layers = {1: _random_layer(forecaster, 1), 2: _random_layer(forecaster, 2), 3: _random_layer(forecaster, 3)}
    together = forecaster.forecast_patients(patients)
    batch = forecaster.forecast_batch(batch_from_subjects(patients), personal=layers)
    assert batch.code.tolist() == [0, 0, 3, 0, 0]
    for row, patient in enumerate(patients):
        if row == 2:
            continue
        reference = _with_layer(forecaster, layers[row]) if row in layers else forecaster
        [alone] = reference.forecast_patients([patient])
        expected = np.array([[p.p10, p.p50, p.p90] for p in alone.points])
        np.testing.assert_allclose(batch.quantiles[row], expected, rtol=1e-5)
        if row not in layers:  # the population rows are exactly what a batch without layers gives
            np.testing.assert_allclose(batch.quantiles[row], [[p.p10, p.p50, p.p90] for p in together[row].points], rtol=1e-6)
    assert not np.allclose(batch.quantiles[1], [[p.p10, p.p50, p.p90] for p in together[1].points])


def test_one_layer_for_every_window_of_a_bank_matches_the_swapped_network(forecaster: Forecaster) -> None:
    patient = synthetic_subject("p", days=1.0, seed=2)
    layer = _random_layer(forecaster, 7)
    bank, _ = forecaster.make_bank({"p": patient})
    origins = bank.training_origins()
    np.testing.assert_allclose(
        forecaster.predict_bank(bank, origins, personal=layer), _with_layer(forecaster, layer).predict_bank(bank, origins), rtol=1e-5,
    )


def test_a_layer_survives_its_stored_form_and_a_wrong_size_is_refused(forecaster: Forecaster) -> None:
    layer = _random_layer(forecaster, 5)
    back = PersonalOutputLayer.from_bytes(layer.to_bytes(), _network(forecaster))
    np.testing.assert_array_equal(back.weight, layer.weight)
    np.testing.assert_array_equal(back.bias, layer.bias)
    with pytest.raises(ValueError, match="does not fit"):
        PersonalOutputLayer.from_bytes(layer.to_bytes()[:-4], _network(forecaster))


def test_row_layers_stack_in_row_order() -> None:
    layers = [PersonalOutputLayer(np.full((2, 3), float(k), np.float32), np.full(2, float(k), np.float32)) for k in range(3)]
    stacked = RowOutputLayers.stack(np.array([4, 0, 2]), layers)
    features, out = torch.ones(5, 3), torch.zeros(5, 2)
    # Row 4 has layer 0 (all zeros), row 0 layer 1 (3 x 1 + 1), row 2 layer 2 (3 x 2 + 2); rows 1 and 3 keep out.
    np.testing.assert_array_equal(stacked.apply(features, out)[:, 0].numpy(), [4.0, 0.0, 8.0, 0.0, 0.0])


def _periodic_patient(days: float) -> SubjectReadings:
    """A patient whose glucose swings with a 3-hour period: what an untrained population layer gets wrong."""
    n = int(days * 288)
    t = 1_700_000_000 + np.arange(n, dtype=np.int64) * 300
    g = 150 + 60 * np.sin(2 * np.pi * np.arange(n) / 36) + np.random.default_rng(0).normal(0, 2, n)
    return SubjectReadings("periodic", t, g, np.zeros(n, dtype=np.int8))


def test_tuning_needs_seven_days_and_enough_usable_windows_and_names_what_the_patient_has(forecaster: Forecaster) -> None:
    with pytest.raises(ValueError, match=r"at least 7 days of readings, this patient has 3\.0"):
        fine_tune(forecaster, _periodic_patient(3.0))
    # Enough readings (one every 35 minutes for 60 days), but never 3 in an hour: no window to forecast from.
    sparse = _periodic_patient(60.0)
    keep = np.arange(len(sparse)) % 7 == 0
    gappy = SubjectReadings("gappy", sparse.times[keep], sparse.glucose[keep], sparse.flags[keep])
    with pytest.raises(ValueError, match="windows to tune on"):
        fine_tune(forecaster, gappy)


def test_tuning_keeps_a_layer_that_beats_the_population_one_on_held_back_data_and_leaves_the_model_alone(forecaster: Forecaster) -> None:
    before = {k: v.clone() for k, v in forecaster.network.state_dict().items()}
    result = fine_tune(forecaster, _periodic_patient(8.0), FAST)
    assert result.kept and result.layer is not None
    assert result.personal_loss < 0.99 * result.population_loss and result.relative_gain > 0.01
    assert result.fit_windows > 1500 and result.check_windows > 400 and result.days == pytest.approx(8.0)
    assert all(torch.equal(before[k], v) for k, v in forecaster.network.state_dict().items())
    # Seeded: the same data gives the same layer.
    again = fine_tune(forecaster, _periodic_patient(8.0), FAST)
    assert again.layer is not None
    np.testing.assert_array_equal(again.layer.weight, result.layer.weight)


def test_a_layer_that_does_not_beat_the_population_one_by_the_margin_is_not_kept(forecaster: Forecaster) -> None:
    # No step can clear an impossible margin: the population layer stays.
    result = fine_tune(forecaster, _periodic_patient(8.0), FineTuneConfig(steps=20, batch_size=64, check_every=10, min_relative_gain=1.0))
    assert not result.kept and result.layer is None


def test_the_gain_is_scored_on_the_days_after_the_tuning_period(forecaster: Forecaster) -> None:
    [row] = personalisation_gain(forecaster, {"periodic": _periodic_patient(10.0)}, config=FAST)
    assert row["personalised"] is True
    assert row["n_later"] > 400
    assert float(row["personal_rmse30"]) < float(row["population_rmse30"])  # type: ignore[arg-type]


def test_layers_reach_their_rows_across_the_8192_window_chunks_of_a_large_batch(forecaster: Forecaster) -> None:
    base = synthetic_subject("p", days=0.3, seed=5)
    patients = [SubjectReadings(f"p{i}", base.times, base.glucose + (i % 7), base.flags) for i in range(8200)]
    rows = [3, 8191, 8192, 8199]  # either side of the chunk boundary
    layers = {row: _random_layer(forecaster, row) for row in rows}
    batch = forecaster.forecast_batch(batch_from_subjects(patients), personal=layers)
    for row in [*rows, 8190, 8193]:
        reference = _with_layer(forecaster, layers[row]) if row in layers else forecaster
        [alone] = reference.forecast_patients([patients[row]])
        np.testing.assert_allclose(batch.quantiles[row], [[p.p10, p.p50, p.p90] for p in alone.points], rtol=1e-5)
