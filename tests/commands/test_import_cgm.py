"""import_cgm: the shared data format, the patient's time zone, the API's validation and dedupe."""

from __future__ import annotations

import gzip
from datetime import datetime, timezone
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from glucoscope.readings.models import GlucoseReading
from tests.factories import PatientFactory

pytestmark = pytest.mark.django_db

CSV = """subject_id,timestamp,glucose_mg_dl
s1,2026-03-29 00:55:00,100
s1,2026-03-29 01:05:00,105
s1,2026-03-29 02:10:00,110
s1,2026-03-29 02:15:00,abc
s1,2026-03-29 02:20:00,900
s1,2026-03-29 02:25:00,Low
"""


def write(tmp_path: Path, text: str, name: str = "cgm.csv.gz") -> Path:
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    return path


def test_imports_in_the_patients_time_zone_across_a_dst_change_and_reports_counts(tmp_path: Path) -> None:
    patient = PatientFactory(time_zone="Europe/London")  # clocks go forward at 01:00 UTC on 2026-03-29
    out = StringIO()
    call_command("import_cgm", str(write(tmp_path, CSV)), "--patient", str(patient.pk), "--no-progress", stdout=out)
    assert "6 rows, 4 accepted, 0 duplicates, 2 rejected" in out.getvalue()
    assert "value: Must be a number" in out.getvalue() and "value: Must be between 20 and 600" in out.getvalue()
    stored = list(GlucoseReading.objects.filter(patient=patient).order_by("measured_at").values_list("measured_at", "value_mgdl", "source"))
    assert stored[0] == (datetime(2026, 3, 29, 0, 55, tzinfo=timezone.utc), 100.0, "import")  # GMT
    assert stored[2][0] == datetime(2026, 3, 29, 1, 10, tzinfo=timezone.utc)  # 02:10 BST
    assert GlucoseReading.objects.filter(patient=patient, sensor_flag="low").count() == 1


def test_reimporting_stores_nothing_twice(tmp_path: Path) -> None:
    patient = PatientFactory()
    path = write(tmp_path, CSV, "cgm.csv")
    call_command("import_cgm", str(path), "--patient", str(patient.pk), "--no-progress", stdout=StringIO())
    out = StringIO()
    call_command("import_cgm", str(path), "--patient", str(patient.pk), "--no-progress", stdout=out)
    assert "0 accepted, 4 duplicates" in out.getvalue()


def test_a_file_with_several_subjects_needs_subject(tmp_path: Path) -> None:
    patient = PatientFactory()
    path = write(tmp_path, CSV + "s2,2026-03-29 03:00:00,120\n")
    with pytest.raises(CommandError, match="holds 2 subjects"):
        call_command("import_cgm", str(path), "--patient", str(patient.pk))
    out = StringIO()
    call_command("import_cgm", str(path), "--patient", str(patient.pk), "--subject", "s2", "--time-zone", "UTC",
                 "--no-progress", stdout=out)
    assert "1 accepted" in out.getvalue()


@pytest.mark.parametrize("args, message", [
    (["missing.csv", "--patient", "1"], "does not exist"),
    (["{csv}", "--patient", "999999"], "No patient"),
    (["{csv}", "--patient", "{patient}", "--time-zone", "Mars/Olympus"], "Unknown time zone"),
    (["{bad}", "--patient", "{patient}"], "lacks the column"),
])
def test_bad_arguments_are_clear_errors(tmp_path: Path, args: list[str], message: str) -> None:
    patient = PatientFactory()
    values = {"csv": str(write(tmp_path, CSV)), "bad": str(write(tmp_path, "a,b\n1,2\n", "bad.csv")), "patient": str(patient.pk)}
    with pytest.raises(CommandError, match=message):
        call_command("import_cgm", *[arg.format(**values) for arg in args])


def test_real_shared_data_imports_when_present(tmp_path: Path, settings) -> None:  # type: ignore[no-untyped-def]
    source = Path(settings.SHARED_DATA_DIR) / "cgm" / "BIGIDEAs.csv.gz"
    if not source.exists():
        pytest.skip(f"{source} not present (../shared/data is optional)")
    from glucoscope.readings.imports import iter_generic_rows

    rows = [r for r in iter_generic_rows(source) if r[0] == next(iter_generic_rows(source))[0]][:2000]
    path = write(tmp_path, "subject_id,timestamp,glucose_mg_dl\n" + "".join(f"{s},{t},{g}\n" for s, t, g in rows))
    patient = PatientFactory(time_zone="America/New_York")
    out = StringIO()
    call_command("import_cgm", str(path), "--patient", str(patient.pk), "--no-progress", stdout=out)
    assert GlucoseReading.objects.filter(patient=patient).count() > 1500, out.getvalue()
