"""`manage.py bench_forecast` prints its table: a smoke run of the inference and personalisation rows."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

pytestmark = pytest.mark.django_db


def test_the_inference_and_personalisation_rows_are_printed_with_their_ratios() -> None:
    out = StringIO()
    call_command("bench_forecast", "--skip-csv", "--skip-e2e", "--batch-sizes", "2", "--repeat", "1", "--force", stdout=out)
    rows = [line for line in out.getvalue().splitlines() if line.startswith("| (")]
    assert any(r.startswith("| (b) service inference, batch 2 ") and "ratio" in r for r in rows), rows
    assert any(r.startswith("| (d) service inference, batch 2, every patient on their own output layer") and "own layers cost" in r
               for r in rows), rows
    assert sum(r.startswith("| (d) tune one patient's output layer") and "patients/h per worker" in r for r in rows) == 2, rows


def test_a_database_not_meant_for_benchmarks_is_refused_and_bad_sizes_are_named() -> None:
    with pytest.raises(CommandError, match="Refusing to write benchmark patients"):
        call_command("bench_forecast", "--skip-csv", "--skip-e2e")
    with pytest.raises(CommandError, match="--batch-sizes must be"):
        call_command("bench_forecast", "--batch-sizes", "a,b", "--force")
