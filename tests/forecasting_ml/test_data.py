from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from forecasting.ml.data import (
    FLAG_HIGH,
    FLAG_LOW,
    build_grid,
    parse_glucose,
    read_cgm_csv,
    read_metadata,
    readings_from_arrays,
)


def minutes(*m: float) -> np.ndarray:
    return (1_700_000_000 + np.asarray(m) * 60).astype(np.int64)


def test_low_and_high_words_and_out_of_range_values_are_clamped_and_flagged() -> None:
    g, flags = parse_glucose(["Low", "HIGH", "120", 12.0, 512, "garbage"])
    assert g[:5].tolist() == [40.0, 400.0, 120.0, 40.0, 400.0]
    assert flags[:5].tolist() == [FLAG_LOW, FLAG_HIGH, 0, FLAG_LOW, FLAG_HIGH]
    assert np.isnan(g[5])


def test_regular_readings_fill_consecutive_slots() -> None:
    r = readings_from_arrays(minutes(0, 5, 10, 15), [100, 110, 120, 130])
    grid = build_grid(r)
    assert grid.n_slots == 4
    assert grid.observed.all()
    assert grid.value.tolist() == [100, 110, 120, 130]


def test_unsorted_input_is_sorted_and_duplicates_keep_the_first_reading() -> None:
    # 10 and 10.5 min fall in one slot: the earlier one must win (causality).
    r = readings_from_arrays(minutes(10.5, 0, 5, 10), [999, 100, 110, 120])
    grid = build_grid(r)
    assert grid.n_slots == 3
    assert grid.value.tolist() == [100, 110, 120]
    assert grid.reading_kept.tolist() == [True, True, True, False]


def test_short_gaps_are_interpolated_and_long_gaps_stay_masked() -> None:
    r = readings_from_arrays(minutes(0, 15, 20, 60), [100, 130, 140, 200])
    grid = build_grid(r)
    # 0 -> 15 min: two missing slots, interpolated linearly.
    assert np.allclose(grid.value[1:3], [110, 120])
    assert grid.interpolated[1:3].all() and not grid.observed[1:3].any()
    # 20 -> 60 min: 35 minutes missing, longer than 15 -> NaN.
    assert np.isnan(grid.value[5:12]).all()
    assert grid.observed[12]


def test_irregular_one_minute_and_jittered_readings_land_on_a_five_minute_grid() -> None:
    r = readings_from_arrays(minutes(*range(0, 31)), np.arange(31) + 100.0)
    grid = build_grid(r)
    assert grid.n_slots == 7
    # Slot k covers [5k-2.5, 5k+2.5) min and keeps its first reading, so a slot
    # never holds a value from after the reading that opened it.
    assert grid.value.tolist() == [100, 103, 108, 113, 118, 123, 128]
    jitter = readings_from_arrays(minutes(0, 4.6, 10.3, 14.8, 20.1), [101, 102, 103, 104, 105])
    assert build_grid(jitter).value.tolist() == [101, 102, 103, 104, 105]


def test_treatment_channels_are_kept_per_slot() -> None:
    r = readings_from_arrays(
        minutes(0, 5, 10), [100, 110, 120], carbs=np.array([0, 30, 0]), insulin=np.array([2, 0, 0])
    )
    grid = build_grid(r)
    assert grid.has_treatments
    assert grid.carbs.tolist() == [0, 30, 0]
    assert grid.insulin.tolist() == [2, 0, 0]


def test_csv_reader_handles_gzip_unsorted_low_high_and_optional_columns(tmp_path: Path) -> None:
    path = tmp_path / "in.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("subject_id,timestamp,glucose_mg_dl,carbs_g,insulin_u\n")
        fh.write("b,2024-01-01 00:05:00,Low,,\n")
        fh.write("a,2024-01-01 00:05:00,120,20,\n")
        fh.write("a,2024-01-01 00:00:00,110,,1.5\n")
        fh.write("b,2024-01-01 00:00:00,High,,\n")
    subjects = read_cgm_csv(path)
    assert set(subjects) == {"a", "b"}
    a = subjects["a"]
    assert a.glucose.tolist() == [110, 120]
    assert a.raw_timestamps.tolist() == ["2024-01-01 00:00:00", "2024-01-01 00:05:00"]
    assert a.carbs.tolist() == [0, 20] and a.insulin.tolist() == [1.5, 0]
    assert subjects["b"].flags.tolist() == [FLAG_HIGH, FLAG_LOW]


def test_metadata_reader_survives_quoted_commas(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text('person_id,CGM_type,age\nP06,"Freestyle Libre 2, Dexcom",21\n')
    assert read_metadata(p)["P06"]["CGM_type"] == "Freestyle Libre 2, Dexcom"


def test_log_and_linear_targets_round_trip() -> None:
    from forecasting.ml.datasets import Scaler, WindowConfig

    future = np.array([[80.0, 120.0, 300.0]])
    last = np.array([100.0])
    for log in (False, True):
        cfg = WindowConfig(log_target=log)
        z = cfg.encode_target(future, last, Scaler())
        assert np.allclose(cfg.decode_target(z, last, Scaler()), future)
