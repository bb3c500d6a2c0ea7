"""`manage.py simulate_cohort`: parallel simulation gives the same cohort file as one process."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("simglucose") is None, reason="simglucose is not installed (pip install simglucose==0.2.11)"
)

PATIENTS = "child#002,adult#001,adolescent#003"


def _simulate(cache_dir: Path, jobs: int) -> bytes:
    call_command("simulate_cohort", cache_dir=str(cache_dir), days=0.1, published_days=0.05, patients=PATIENTS, jobs=jobs)
    with gzip.open(cache_dir / "simglucose.csv.gz", "rb") as cohort:
        return cohort.read()


def test_two_processes_write_the_same_cohort_as_one_in_the_order_asked(tmp_path: Path) -> None:
    parallel = _simulate(tmp_path / "parallel", jobs=2)
    serial = _simulate(tmp_path / "serial", jobs=1)
    assert parallel == serial
    subjects = list(dict.fromkeys(line.split(b",")[0] for line in parallel.splitlines()[1:]))
    assert subjects == [b"sim-child#002", b"sim-adult#001", b"sim-adolescent#003", b"sim-child#002-published",
                        b"sim-adult#001-published", b"sim-adolescent#003-published"]
    metadata = (tmp_path / "parallel" / "simglucose-metadata.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in metadata[1:]] == [s.decode() for s in subjects]
    # A second run reuses every cached patient and writes the same file again.
    assert _simulate(tmp_path / "parallel", jobs=2) == parallel


def test_bad_arguments_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="--jobs must be at least 1"):
        call_command("simulate_cohort", cache_dir=str(tmp_path), jobs=0)
    with pytest.raises(CommandError, match="--days and --published-days must be 0 or more"):
        call_command("simulate_cohort", cache_dir=str(tmp_path), published_days=-1)
    with pytest.raises(CommandError, match="nothing to simulate"):
        call_command("simulate_cohort", cache_dir=str(tmp_path), days=0, published_days=0)
    with pytest.raises(CommandError, match="apply to the published days alone"):
        call_command("simulate_cohort", cache_dir=str(tmp_path), sensor="Dexcom")
    with pytest.raises(CommandError, match="would replace the training cohort"):
        call_command("simulate_cohort", days=0, published_days=1)
    with pytest.raises(CommandError, match="unknown simglucose patients"):
        call_command("simulate_cohort", cache_dir=str(tmp_path), patients="adult#099")


def test_published_days_alone_with_a_3_minute_sensor_and_total_insulin(tmp_path: Path) -> None:
    """The robustness files of docs/forecasting.md: simglucose as published, Dexcom, basal in insulin_u."""
    call_command("simulate_cohort", cache_dir=str(tmp_path), days=0, published_days=0.05, patients="adult#001",
                 sensor="Dexcom", log_basal=True, jobs=1)
    with gzip.open(tmp_path / "simglucose.csv.gz", "rt") as cohort:
        rows = [line.split(",") for line in cohort.read().splitlines()[1:]]
    assert {row[0] for row in rows} == {"sim-adult#001-published"}
    assert [row[1][-5:] for row in rows[:3]] == ["03:00", "06:00", "09:00"]  # every 3 minutes
    assert all(float(row[4]) > 0 for row in rows), "basal is delivered in every step"
