"""Forecasting networks: pure tensor maths, no data loading, no training loop.

Shapes use B = batch, L = context steps (5-min slots), F = input channels,
H = horizon steps (24 for 120 min), Q = quantiles (p10, p50, p90).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from forecasting.ml.data import GRID_MINUTES
from forecasting.ml.datasets import TREATMENT_CHANNELS, TREATMENT_START

QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
#: Channels of carbohydrate and insulin when the network reads treatments.
CARBS_CHANNEL = TREATMENT_START + TREATMENT_CHANNELS.index("carbs")
INSULIN_CHANNEL = TREATMENT_START + TREATMENT_CHANNELS.index("insulin")
#: Time constants (minutes) of the decayed treatment sums the head reads ("on board" at several speeds).
TREATMENT_DECAY_MINUTES: tuple[float, ...] = (30.0, 60.0, 120.0, 240.0)


class PatchGRUForecaster(nn.Module):
    """GRU encoder over 15-minute patches plus a recent-detail skip path.

    Why patches: a GRU stepping over every 5-min slot of a 6 h context is the
    CPU bottleneck; grouping 3 slots per token keeps full resolution in the
    input while cutting the recurrent steps 3x. The last hour is also fed to the
    head directly, because short horizons depend mostly on the latest trend.

    The network predicts *deltas* from the last glucose value on the
    normalised scale. Quantiles cannot cross: p10 = p50 - softplus(a) and
    p90 = p50 + softplus(b).

    Args:
        n_features: F, input channels; channel 0 must be normalised glucose and
            channel 1 the availability mask (see ``datasets.BASE_CHANNELS``).
        context_steps: L, divisible by ``patch``.
        horizon_steps: H.
        hidden: GRU hidden size.
        patch: slots per GRU token.
        recent_steps: slots of the last hour given to the head unchanged.
        treatment_summary: 1 to also give the head, for carbohydrate and insulin, exponentially decayed
            sums over the context (time constants TREATMENT_DECAY_MINUTES): how much is still "on
            board". Why: through the patch embedding a meal is one slot of one token, and the GRU must
            learn to carry it for hours; the sums hand the head its timing and size directly. Needs the
            treatment channels (CARBS_CHANNEL, INSULIN_CHANNEL). 0 for networks without them.
    """

    def __init__(
        self,
        n_features: int,
        context_steps: int = 72,
        horizon_steps: int = 24,
        hidden: int = 64,
        patch: int = 3,
        recent_steps: int = 12,
        head_hidden: int = 128,
        dropout: float = 0.0,
        treatment_summary: int = 0,
    ) -> None:
        super().__init__()
        if context_steps % patch:
            raise ValueError("context_steps must be divisible by patch")
        if treatment_summary and n_features <= INSULIN_CHANNEL:
            raise ValueError("treatment_summary needs the carbohydrate and insulin channels")
        self.n_features = n_features
        self.context_steps = context_steps
        self.horizon_steps = horizon_steps
        self.hidden = hidden
        self.patch = patch
        self.recent_steps = recent_steps
        self.n_quantiles = len(QUANTILES)
        token_dim = patch * (n_features + 1)
        self.embed = nn.Sequential(nn.Linear(token_dim, hidden), nn.GELU())
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head_hidden = head_hidden
        self.treatment_summary = int(bool(treatment_summary))
        recent_dim = recent_steps * 2 + 3 + self.treatment_summary_dim
        # [L, K]: the weight of a treatment k slots before the origin in each decayed sum. A buffer, not
        # a parameter, and not saved: it follows from the hyperparameters.
        ago = torch.arange(context_steps - 1, -1, -1, dtype=torch.float32)[:, None] * GRID_MINUTES
        taus = torch.tensor(TREATMENT_DECAY_MINUTES, dtype=torch.float32)[None, :]
        self.register_buffer("decay", torch.exp(-ago / taus), persistent=False)
        self.head = nn.Sequential(
            nn.Linear(hidden + recent_dim, head_hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(head_hidden, head_hidden),
            nn.GELU(),
            nn.Linear(head_hidden, horizon_steps * 3),
        )

    def hyperparameters(self) -> dict[str, int | float]:
        return {
            "n_features": self.n_features,
            "context_steps": self.context_steps,
            "horizon_steps": self.horizon_steps,
            "hidden": self.hidden,
            "patch": self.patch,
            "recent_steps": self.recent_steps,
            "head_hidden": self.head_hidden,
            "treatment_summary": self.treatment_summary,
        }

    @property
    def treatment_summary_dim(self) -> int:
        """Head inputs taken by the decayed sums: 2 channels x len(TREATMENT_DECAY_MINUTES), or 0."""
        return 2 * len(TREATMENT_DECAY_MINUTES) * self.treatment_summary

    def head_features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the head's output layer: what a personal output layer reads.

        Args:
            x: ``[B, L, F]`` features; ``x[:, -1, 0]`` is the last (real) glucose.
        Returns:
            ``[B, head_hidden]``.
        """
        B, L, _ = x.shape
        g = x[..., 0]
        avail = x[..., 1]
        # Relative level makes the encoder translation-invariant in glucose.
        rel = (g - g[:, -1:]) * avail
        z = torch.cat([x, rel.unsqueeze(-1)], dim=-1)
        tokens = z.reshape(B, L // self.patch, self.patch * z.shape[-1])
        _, h = self.gru(self.embed(tokens))
        r = self.recent_steps
        parts = [rel[:, -r:], avail[:, -r:], g[:, -1:], x[:, -1, 3:5]]
        if self.treatment_summary:
            # [B, L, 2] x [L, K] -> [B, 2, K] -> [B, 2K]
            treatments = x[..., CARBS_CHANNEL : INSULIN_CHANNEL + 1]
            parts.append(torch.einsum("blc,lk->bck", treatments, self.decay).reshape(B, -1))
        recent = torch.cat(parts, dim=1)
        return self.head[:-1](torch.cat([h[-1], recent], dim=1))

    @property
    def output_layer(self) -> nn.Linear:
        """The head's last layer, ``head_hidden`` -> ``H * 3``: the part a patient's data may re-fit."""
        layer = self.head[-1]
        assert isinstance(layer, nn.Linear)
        return layer

    def quantiles_from_output(self, out: torch.Tensor) -> torch.Tensor:
        """``[B, H * 3]`` output-layer values -> ``[B, H, Q]`` non-crossing p10, p50, p90 deltas."""
        out = out.reshape(out.shape[0], self.horizon_steps, 3)
        median = out[..., 1]
        lower = median - nn.functional.softplus(out[..., 0])
        upper = median + nn.functional.softplus(out[..., 2])
        return torch.stack([lower, median, upper], dim=-1)

    def forward(self, x: torch.Tensor, personal: RowOutputLayers | None = None) -> torch.Tensor:
        """Predict quantile deltas.

        Args:
            x: ``[B, L, F]`` features; ``x[:, -1, 0]`` is the last (real) glucose.
            personal: output layers of their own for some rows of the batch (personalised patients);
                every other row uses the population output layer.
        Returns:
            ``[B, H, Q]`` normalised deltas from the last glucose for p10, p50, p90.
        """
        features = self.head_features(x)
        out = self.output_layer(features)
        if personal is not None:
            out = personal.apply(features, out)
        return self.quantiles_from_output(out)


@dataclass(frozen=True)
class PersonalOutputLayer:
    """A patient's own output layer for one network: ``weight`` ``[O, D]`` and ``bias`` ``[O]``, float32."""

    weight: np.ndarray
    bias: np.ndarray

    def to_bytes(self) -> bytes:
        """Little-endian float32, weight (row-major) then bias: the stored form."""
        return np.concatenate([self.weight.ravel(), self.bias]).astype("<f4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, network: PatchGRUForecaster) -> PersonalOutputLayer:
        """The layer stored by :meth:`to_bytes` for ``network``; ValueError if its size does not fit it."""
        out_features, in_features = network.output_layer.weight.shape
        values = np.frombuffer(data, dtype="<f4")
        if values.size != out_features * (in_features + 1):
            raise ValueError(f"a personal layer of {values.size} values does not fit a {out_features}x{in_features} output layer")
        weight = values[: out_features * in_features].reshape(out_features, in_features).astype(np.float32)
        return cls(weight, values[out_features * in_features :].astype(np.float32))


@dataclass(frozen=True)
class RowOutputLayers:
    """Output layers of their own for some rows of a batch, applied in one batched matrix product.

    Attributes:
        rows: ``[K]`` int64 batch rows.
        weight: ``[K, O, D]`` each row's layer weight (O = H * 3 outputs, D = head_hidden).
        bias: ``[K, O]``.
    """

    rows: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    @classmethod
    def stack(cls, rows: np.ndarray, layers: list[PersonalOutputLayer], device: str = "cpu") -> RowOutputLayers:
        """Batch rows ``[K]`` and their layers, in the same order."""
        return cls(
            torch.as_tensor(rows, dtype=torch.int64, device=device),
            torch.from_numpy(np.stack([layer.weight for layer in layers])).to(device),
            torch.from_numpy(np.stack([layer.bias for layer in layers])).to(device),
        )

    @classmethod
    def repeated(cls, count: int, layer: PersonalOutputLayer, device: str = "cpu") -> RowOutputLayers:
        """One layer for all ``count`` rows (one patient's windows), as views: nothing is copied per row."""
        weight = torch.from_numpy(layer.weight).to(device)
        bias = torch.from_numpy(layer.bias).to(device)
        return cls(torch.arange(count, device=device), weight.expand(count, -1, -1), bias.expand(count, -1))

    def apply(self, features: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` ``[B, O]`` with ``rows`` replaced by their own layer applied to ``features`` ``[B, D]``."""
        personal = torch.baddbmm(self.bias.unsqueeze(-1), self.weight, features[self.rows].unsqueeze(-1)).squeeze(-1)
        return out.index_copy(0, self.rows, personal)


def pinball_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    quantiles: tuple[float, ...] = QUANTILES,
) -> torch.Tensor:
    """Masked mean pinball (quantile) loss.

    Args:
        pred: ``[B, H, Q]``.
        target: ``[B, H]``.
        mask: ``[B, H]`` 1.0 where the target exists.
    Returns:
        scalar tensor.
    """
    q = torch.tensor(quantiles, dtype=pred.dtype, device=pred.device)
    diff = target.unsqueeze(-1) - pred
    loss = torch.maximum(q * diff, (q - 1) * diff)
    loss = loss * mask.unsqueeze(-1)
    return loss.sum() / (mask.sum() * len(quantiles)).clamp_min(1.0)


NETWORKS: dict[str, type[nn.Module]] = {"patch_gru": PatchGRUForecaster}


def build_network(name: str, hyperparameters: dict[str, int | float]) -> nn.Module:
    """Instantiate a registered network from its saved hyperparameters."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}")
    return NETWORKS[name](**hyperparameters)  # type: ignore[arg-type]
