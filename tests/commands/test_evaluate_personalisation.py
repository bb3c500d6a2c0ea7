"""`manage.py evaluate_personalisation --input FILE`: tune on each subject's first 7 days, score the later days."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.factories import swing_mgdl


def _write(path: Path, days: dict[str, float]) -> Path:
    frames = []
    for subject, span in days.items():
        n = int(span * 288)
        stamps = pd.Timestamp("2024-03-01") + pd.to_timedelta(5 * np.arange(n), unit="min")
        frames.append(pd.DataFrame({"subject_id": subject, "timestamp": stamps.strftime("%Y-%m-%d %H:%M:%S"),
                                    "glucose_mg_dl": np.round(swing_mgdl(np.arange(n)), 1)}))
    pd.concat(frames).to_csv(path, index=False)
    return path


def test_every_subject_of_the_file_with_enough_days_gets_a_row_and_the_mean_is_printed(tmp_path: Path) -> None:
    path = _write(tmp_path / "cohort.csv", {"long": 10.0, "short": 3.0})
    out = StringIO()
    call_command("evaluate_personalisation", "--input", str(path), "--steps", "60", "--threads", "1", stdout=out)
    lines = out.getvalue().splitlines()
    [row] = [line for line in lines if line.startswith("| long ")]
    assert row.startswith("| long | yes |")
    population30, personal30 = (float(cell) for cell in row.strip("|").split("|")[3:5])
    assert personal30 < population30
    assert any(line.startswith("| **mean of 1 subjects** | 1 of 1 |") for line in lines)
    assert not any(line.startswith("| short ") for line in lines)  # 3 days: not enough to tune and score
    [result] = json.loads(lines[-1])
    assert result["subject"] == "long" and result["n_later"] > 400


def test_bad_arguments_are_named() -> None:
    with pytest.raises(CommandError, match="--fit-days must be at least 7"):
        call_command("evaluate_personalisation", "--input", "x.csv", "--fit-days", "3")
    with pytest.raises(CommandError, match=r"--input: no such file: missing\.csv"):
        call_command("evaluate_personalisation", "--input", "missing.csv")
