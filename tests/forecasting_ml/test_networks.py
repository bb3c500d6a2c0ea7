from __future__ import annotations

import pytest
import torch

from forecasting.ml.networks import PatchGRUForecaster, build_network, pinball_loss


def test_output_shape_and_quantiles_never_cross() -> None:
    net = PatchGRUForecaster(n_features=5, context_steps=24, horizon_steps=6, hidden=8, head_hidden=16, recent_steps=6)
    x = torch.randn(7, 24, 5)
    out = net(x)
    assert out.shape == (7, 6, 3)
    assert (out[..., 0] <= out[..., 1]).all() and (out[..., 1] <= out[..., 2]).all()


def test_pinball_loss_is_zero_on_a_perfect_forecast_and_ignores_masked_targets() -> None:
    target = torch.tensor([[1.0, 2.0]])
    pred = target.unsqueeze(-1).repeat(1, 1, 3)
    assert float(pinball_loss(pred, target, torch.ones(1, 2))) == 0.0
    wrong = pred.clone()
    wrong[0, 1] += 100.0
    assert float(pinball_loss(wrong, target, torch.tensor([[1.0, 0.0]]))) == 0.0


def test_pinball_loss_penalises_under_prediction_more_for_the_high_quantile() -> None:
    target = torch.zeros(1, 1)
    under = torch.full((1, 1, 3), -1.0)
    loss = pinball_loss(under, target, torch.ones(1, 1), quantiles=(0.9,) * 3)
    assert float(loss) == pytest.approx(0.9)


def test_build_network_from_hyperparameters_round_trips() -> None:
    net = PatchGRUForecaster(n_features=5, context_steps=12, horizon_steps=4, hidden=8, head_hidden=8, recent_steps=3)
    again = build_network("patch_gru", net.hyperparameters())
    again.load_state_dict(net.state_dict())
    x = torch.randn(2, 12, 5)
    assert torch.allclose(net(x), again(x))
