"""Fixtures for the pure ML tests: tiny seeded synthetic CGM data, CPU only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from forecasting.ml.data import SubjectReadings

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cgm"


def synthetic_subject(subject_id: str, days: float = 2.0, seed: int = 0, cohort: str = "synthetic") -> SubjectReadings:
    """A smooth, meal-like glucose trace every 5 min with a little noise and a gap."""
    rng = np.random.default_rng(seed)
    n = int(days * 288)
    t = 1_700_000_000 + np.arange(n) * 300
    hours = (t % 86400) / 3600
    base = 140 + 50 * np.sin(2 * np.pi * hours / 6 + seed) + 20 * np.sin(2 * np.pi * hours / 24)
    g = np.clip(base + rng.normal(0, 3, n), 40, 400)
    keep = np.ones(n, dtype=bool)
    keep[100:130] = False  # a 2.5 h sensor gap
    return SubjectReadings(
        subject_id=subject_id,
        times=t[keep].astype(np.int64),
        glucose=g[keep],
        flags=np.zeros(int(keep.sum()), dtype=np.int8),
        cohort=cohort,
    )


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    # Other engineers share these cores; tests stay small and single-threaded.
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture
def subjects() -> dict[str, SubjectReadings]:
    return {f"syn/{i}": synthetic_subject(f"s{i}", days=2.0, seed=i) for i in range(4)}


@pytest.fixture
def shared_data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared CGM data not found at {SHARED_DATA}; these tests need ../shared/data/cgm")
    return SHARED_DATA
