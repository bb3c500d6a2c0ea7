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
    call_command("simulate_cohort", cache_dir=str(cache_dir), days=0.1, patients=PATIENTS, jobs=jobs)
    with gzip.open(cache_dir / "simglucose.csv.gz", "rb") as cohort:
        return cohort.read()


def test_two_processes_write_the_same_cohort_as_one_in_the_order_asked(tmp_path: Path) -> None:
    parallel = _simulate(tmp_path / "parallel", jobs=2)
    serial = _simulate(tmp_path / "serial", jobs=1)
    assert parallel == serial
    subjects = list(dict.fromkeys(line.split(b",")[0] for line in parallel.splitlines()[1:]))
    assert subjects == [b"sim-child#002", b"sim-adult#001", b"sim-adolescent#003"]
    # A second run reuses every cached patient and writes the same file again.
    assert _simulate(tmp_path / "parallel", jobs=2) == parallel


def test_bad_arguments_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="--jobs must be at least 1"):
        call_command("simulate_cohort", cache_dir=str(tmp_path), jobs=0)
    with pytest.raises(CommandError, match="unknown simglucose patients"):
        call_command("simulate_cohort", cache_dir=str(tmp_path), patients="adult#099")
