"""Saving and loading models as a state_dict (.pt) plus JSON metadata.

Never pickles: weights are loaded with ``torch.load(weights_only=True)`` and the
network is rebuilt from the hyperparameters in the JSON. The JSON carries the
sha256 of the weights file, checked on load so a swapped or truncated file
fails loudly instead of forecasting nonsense.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from forecasting.ml.networks import build_network

FORMAT_VERSION = 1
ERROR_CHECKSUM = "model weights checksum mismatch: {path}"
ERROR_FORMAT = "unsupported model artifact format_version {version}"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_artifact(
    directory: str | Path,
    name: str,
    network: nn.Module,
    network_name: str,
    metadata: dict[str, Any],
) -> Path:
    """Write ``<name>.pt`` (state_dict) and ``<name>.json``; returns the JSON path.

    ``metadata`` should hold version, window config, scaler, calibration,
    training summary and metrics; this function adds format, network name,
    hyperparameters, weights file name, checksum and creation time.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / f"{name}.pt"
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    torch.save(state, weights)
    meta = dict(metadata)
    meta.update(
        {
            "format_version": FORMAT_VERSION,
            "network": network_name,
            "hyperparameters": network.hyperparameters(),  # type: ignore[operator]
            "weights_file": weights.name,
            "sha256": sha256_file(weights),
            "weights_bytes": weights.stat().st_size,
            "created": meta.get("created") or datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    json_path = directory / f"{name}.json"
    json_path.write_text(json.dumps(_finite_or_null(meta), indent=2, sort_keys=True, default=float, allow_nan=False) + "\n")
    return json_path


def _finite_or_null(value: Any) -> Any:
    """NaN and infinity (an undefined metric, e.g. precision with no alerts) as null: strict JSON, which
    PostgreSQL's json type and other readers accept, instead of Python's NaN extension."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(item) for item in value]
    return value


def load_artifact(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a model from its JSON (or the .pt next to it) and verify the checksum.

    Raises:
        ValueError: checksum mismatch or unknown format.
    """
    path = Path(path)
    if path.suffix == ".pt":
        path = path.with_suffix(".json")
    meta: dict[str, Any] = json.loads(path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(ERROR_FORMAT.format(version=meta.get("format_version")))
    weights = path.parent / meta["weights_file"]
    if sha256_file(weights) != meta["sha256"]:
        raise ValueError(ERROR_CHECKSUM.format(path=weights))
    network = build_network(meta["network"], meta["hyperparameters"])
    state = torch.load(weights, map_location=device, weights_only=True)
    network.load_state_dict(state)
    network.to(device)
    network.eval()
    return network, meta
