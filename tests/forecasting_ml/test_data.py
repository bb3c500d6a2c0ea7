from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from forecasting.ml.data import (
    FLAG_HIGH,
    FLAG_LOW,
    build_grid,
    off_grid,
    origin_lattice,
    parse_glucose,
    read_cgm_csv,
    read_metadata,
    readings_from_arrays,
    without_basal_floor,
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


def test_bare_times_of_day_run_over_midnight_into_the_next_day(tmp_path: Path) -> None:
    # Colas_2019 writes only the time of day, two days per subject in file order.
    path = tmp_path / "tod.csv"
    path.write_text(
        "subject_id,timestamp,glucose_mg_dl\n"
        "a,23:50:14,100\na,23:55:14,101\na,00:00:14,102\na,00:05:14,103\n"
        "b,12:00:00,90\nb,11:55:00,89\nb,12:05:00,91\n"  # a row out of order within one day
        "a,24:00:00,1\n"  # not a time of day: dropped
    )
    subjects = read_cgm_csv(path)
    a, b = subjects["a"], subjects["b"]
    assert a.glucose.tolist() == [100, 101, 102, 103]
    assert np.diff(a.times).tolist() == [300, 300, 300]
    assert a.raw_timestamps.tolist() == ["23:50:14", "23:55:14", "00:00:14", "00:05:14"]
    assert b.glucose.tolist() == [89, 90, 91] and np.diff(b.times).tolist() == [300, 300]


def test_the_lattice_of_a_reading_on_the_grid_is_its_grid_window() -> None:
    rng = np.random.default_rng(0)
    t = minutes(*np.arange(0, 600, 5))
    keep = np.ones(t.size, dtype=bool)
    keep[[20, 40, 41, 60, 61, 62, 63, 64]] = False  # a 10-minute (interpolated) and a 25-minute (masked) gap
    r = readings_from_arrays(t[keep], rng.normal(150, 30, t.size)[keep], carbs=np.arange(keep.sum()) % 7 == 0)
    grid = build_grid(r)
    assert not off_grid(r.times, grid).any()
    origins = np.arange(30, len(r))
    context = origin_lattice(r, origins, 24)
    window = grid.reading_slot[origins][:, None] + np.arange(-23, 1)
    np.testing.assert_array_equal(context.slot_time, grid.slot_time[window])
    np.testing.assert_array_equal(context.observed, grid.observed[window])
    np.testing.assert_allclose(context.value, grid.value[window])
    np.testing.assert_allclose(context.carbs, grid.carbs[window])


def test_one_minute_readings_get_a_lattice_ending_at_each_reading() -> None:
    r = readings_from_arrays(minutes(*range(0, 120)), 100.0 + np.arange(120), insulin=np.ones(120))
    off = off_grid(r.times, build_grid(r))
    # Each slot keeps its first reading, 2 minutes before the slot's time: only the very first reading is
    # on the grid, so every other origin would start from an older value.
    assert off.tolist() == [False] + [True] * 119
    context = origin_lattice(r, np.array([119, 118]), 12)
    # Every point is the reading exactly 5 k minutes before the origin, never a later one.
    assert context.value[0].tolist() == [100.0 + m for m in range(64, 120, 5)]
    assert context.value[1].tolist() == [100.0 + m for m in range(63, 119, 5)]
    assert context.observed.all()
    assert (context.slot_time[:, -1] == r.times[[119, 118]]).all()
    # Insulin is summed over the readings within half a slot of each point, and none after the origin.
    assert context.insulin[0, :-1].tolist() == [5.0] * 11 and context.insulin[0, -1] == 3.0
    assert context.carbs is not None and not context.carbs.any()


def test_a_lattice_does_not_depend_on_readings_after_its_origin() -> None:
    rng = np.random.default_rng(1)
    t = minutes(*np.sort(rng.uniform(0, 400, 300)))
    g = rng.normal(150, 40, 300)
    origins = np.arange(150, 160)
    before = origin_lattice(readings_from_arrays(t, g), origins, 72)
    g_changed = g.copy()
    g_changed[160:] = 400.0
    after = origin_lattice(readings_from_arrays(t, g_changed), origins, 72)
    np.testing.assert_array_equal(before.value, after.value)
    np.testing.assert_array_equal(before.observed, after.observed)


def test_a_basal_floor_under_the_insulin_column_is_removed_and_boluses_kept(tmp_path: Path) -> None:
    t = minutes(*np.arange(0, 5 * 600, 5))
    bolus = np.zeros(t.size)
    bolus[[10, 100, 250, 400]] = [4.0, 2.5, 6.0, 1.0]
    assert without_basal_floor(t, bolus).tolist() == bolus.tolist()  # bolus-only data passes unchanged
    basal = 0.1 + 0.02 * (np.arange(t.size) > 300)  # a pump's basal, changed once
    cleaned = without_basal_floor(t, bolus + basal)
    # Once 3 hours are in the window, only the boluses remain (near the basal change, within 0.02 U).
    np.testing.assert_allclose(cleaned[40:], bolus[40:], atol=0.021)
    assert cleaned[400] > 0.95
    path = tmp_path / "pump.csv"
    rows = "".join(
        f"a,{np.datetime64(int(x), 's').astype(str).replace('T', ' ')},120,,{u:.3f}\n"
        for x, u in zip(t, bolus + basal, strict=True)
    )
    path.write_text("subject_id,timestamp,glucose_mg_dl,carbs_g,insulin_u\n" + rows)
    np.testing.assert_allclose(read_cgm_csv(path)["a"].insulin[40:], bolus[40:], atol=0.021)
