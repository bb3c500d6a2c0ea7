"""Hand-computed checks of every formula in glucoscope.metrics (no Django, no data files)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from glucoscope.metrics import (
    agp_profile,
    compute_summary,
    conga,
    daily_profiles,
    glycemia_risk_index,
    gri_zone,
    lbgi_hbgi,
    long_term_risk,
    mage,
    modd,
    parse_sensor_values,
    sufficiency,
    wear_statistics,
)

T0 = np.datetime64("2024-03-04T00:00:00", "s")
FIVE_MIN = np.timedelta64(300, "s")

# Ten readings chosen so each consensus bucket has a round share.
BUCKETS = np.array([50, 60, 70, 100, 140, 150, 180, 200, 260, 300], dtype=float)


def ts(n: int, step_s: int = 300, start: np.datetime64 = T0) -> np.ndarray:
    return start + np.arange(n) * np.timedelta64(step_s, "s")


def secs(n: int, step_s: int = 300) -> np.ndarray:
    return np.arange(n, dtype=float) * step_s


# ----------------------------------------------------------------------------- consensus
def test_time_in_ranges_by_hand() -> None:
    s = compute_summary(BUCKETS, ts(BUCKETS.size))
    assert s.time_below_54 == pytest.approx(10.0)  # 50
    assert s.time_below_70 == pytest.approx(20.0)  # 50, 60 (includes <54)
    assert s.time_in_range_70_180 == pytest.approx(50.0)  # 70..180 inclusive
    assert s.time_above_180 == pytest.approx(30.0)  # 200, 260, 300 (includes >250)
    assert s.time_above_250 == pytest.approx(20.0)
    assert s.time_in_tight_range_70_140 == pytest.approx(30.0)  # 70, 100, 140


def test_mean_sd_cv_gmi_by_hand() -> None:
    s = compute_summary(BUCKETS, ts(BUCKETS.size))
    assert s.mean_glucose == pytest.approx(151.0)
    assert s.gmi == pytest.approx(3.31 + 0.02392 * 151.0)  # 6.92192
    s2 = compute_summary(np.array([100.0, 200.0]), ts(2))
    assert s2.sd == pytest.approx(math.sqrt(5000.0))  # sample SD, ddof=1
    assert s2.cv == pytest.approx(100 * math.sqrt(5000.0) / 150.0)


def test_wear_statistics_and_sufficiency() -> None:
    n = 14 * 288
    days, active = wear_statistics(secs(n), 5)
    assert days == pytest.approx(14.0)
    assert active == pytest.approx(100.0)
    # Every other reading missing -> half the 5-minute slots are empty.
    days, active = wear_statistics(secs(n)[::2], 5)
    assert active == pytest.approx(50.0, abs=0.05)
    # 15-minute device declared as such is 100 % active.
    assert wear_statistics(secs(14 * 96, 900), 15)[1] == pytest.approx(100.0)
    assert sufficiency(14.0, 70.0)[0] is True
    assert sufficiency(13.9, 100.0)[0] is False
    assert sufficiency(30.0, 69.9)[0] is False


def test_insufficient_data_still_reports_numbers() -> None:
    s = compute_summary(np.full(288, 120.0), ts(288))
    assert s.sufficient_data is False
    assert s.mean_glucose == pytest.approx(120.0)
    assert s.time_in_range_70_180 == pytest.approx(100.0)


# ----------------------------------------------------------------------------- GRI
def test_gri_by_hand() -> None:
    r = glycemia_risk_index(BUCKETS)
    assert r is not None
    # VLow 10, Low 10, High (181-250) 10, VHigh 20 -> 30 + 24 + 8 + 32
    assert r.gri == pytest.approx(94.0)
    assert r.hypo_component == pytest.approx(10 + 0.8 * 10)
    assert r.hyper_component == pytest.approx(20 + 0.5 * 10)
    assert r.zone == "E"
    assert "Klonoff" in r.citation


def test_gri_cap_and_zones() -> None:
    r = glycemia_risk_index(np.full(10, 40.0))
    assert r is not None and r.gri == 100.0
    assert [gri_zone(x) for x in (0, 20, 20.5, 40, 41, 60, 61, 80, 80.1, 100)] == list("AABBCCDDEE")


# ----------------------------------------------------------------------------- LBGI/HBGI
def test_lbgi_hbgi_by_hand() -> None:
    # f(50) = 1.509*((ln 50)^1.084 - 5.381) = -1.50001, r = 22.5004
    # f(300) = 1.84261, r = 33.9520; both averaged over n = 2
    lbgi, hbgi = lbgi_hbgi(np.array([50.0, 300.0]))
    assert lbgi == pytest.approx(22.50044545 / 2, rel=1e-7)
    assert hbgi == pytest.approx(33.95198752 / 2, rel=1e-7)
    lbgi, hbgi = lbgi_hbgi(np.array([100.0]))
    assert lbgi == pytest.approx(0.48205113, rel=1e-7)
    assert hbgi == 0.0


# ----------------------------------------------------------------------------- CONGA / MODD
def test_conga_linear_ramp_is_zero_and_alternating_by_hand() -> None:
    n = 36  # 3 h of 5-min data
    v = 100 + 2.0 * np.arange(n)
    assert conga(v, secs(n), hours=1) == pytest.approx(0.0)
    # Hourly square wave 100/150: differences 1 h apart are +50 / -50 alternating.
    hour = (np.arange(48) // 12) % 2
    sq = np.where(hour == 0, 100.0, 150.0)
    d = sq[12:] - sq[:-12]
    assert conga(sq, secs(48), hours=1) == pytest.approx(float(np.std(d, ddof=1)))
    # d = +50 (24x), -50 (12x): mean 50/3, sum of squared deviations 80000, ddof=1 -> /35.
    assert conga(sq, secs(48), hours=1) == pytest.approx(math.sqrt(80000 / 35))


def test_modd_by_hand() -> None:
    day = 100 + 30 * np.sin(np.arange(288) / 288 * 2 * np.pi)
    v = np.concatenate([day, day + 20.0])
    assert modd(v, secs(v.size)) == pytest.approx(20.0)
    assert modd(day, secs(288)) is None  # no pair 24 h apart


def test_grid_does_not_bridge_long_gaps() -> None:
    # Two days with a 2-hour hole on day 2: only pairs with data on both days count.
    v = np.concatenate([np.full(288, 100.0), np.full(288, 130.0)])
    t = secs(576)
    keep = np.ones(576, bool)
    keep[300:324] = False
    assert modd(v[keep], t[keep]) == pytest.approx(30.0)


# ----------------------------------------------------------------------------- MAGE
def test_mage_triangle_wave_by_hand() -> None:
    # 100 -> 200 -> 100 every 4 h for 2 days (ending on a trough): every excursion is
    # 100 mg/dL > 1 SD (~29), so MAGE+ = MAGE- = 100.
    k = np.arange(2 * 288 + 1)
    phase = (k % 48) / 48.0
    v = 100 + 200 * np.minimum(phase, 1 - phase)
    assert mage(v, secs(v.size)) == pytest.approx(100.0, abs=1e-9)


def test_mage_constant_and_short_is_none() -> None:
    assert mage(np.full(100, 120.0), secs(100)) is None
    # Ending mid-way down the last fall: that excursion is 95.83, so MAGE- = (11*100+95.83)/12.
    k = np.arange(2 * 288)
    phase = (k % 48) / 48.0
    v = 100 + 200 * np.minimum(phase, 1 - phase)
    assert mage(v, secs(v.size)) == pytest.approx((100 + (1100 + 200 * (23 / 48)) / 12) / 2)
    assert mage(np.array([100.0, 200.0, 100.0]), secs(3)) is None


# ----------------------------------------------------------------------------- edge cases
def test_empty_input() -> None:
    s = compute_summary(np.array([]), np.array([], dtype="datetime64[s]"))
    assert s.days_of_data == 0.0 and s.percent_active == 0.0 and s.sufficient_data is False
    for name in ("mean_glucose", "sd", "cv", "gmi", "time_in_range_70_180", "gri", "gri_zone", "lbgi", "mage"):
        assert getattr(s, name) is None, name


def test_all_nan_and_partial_nan() -> None:
    s = compute_summary(np.array([np.nan, np.nan]), ts(2))
    assert s.mean_glucose is None and s.days_of_data == 0.0
    s = compute_summary(np.array([np.nan, 100.0, np.nan, 200.0]), ts(4))
    assert s.mean_glucose == pytest.approx(150.0)
    assert s.time_above_180 == pytest.approx(50.0)


def test_single_reading() -> None:
    s = compute_summary(np.array([95.0]), ts(1))
    assert s.mean_glucose == 95.0 and s.sd is None and s.cv is None
    assert s.mage is None and s.conga is None and s.modd is None
    assert s.days_of_data == pytest.approx(5 / 1440)
    assert s.gri == 0.0 and s.gri_zone == "A"


def test_constant_series() -> None:
    n = 3 * 288
    s = compute_summary(np.full(n, 110.0), ts(n))
    assert s.sd == 0.0 and s.cv == 0.0 and s.mage is None
    assert s.conga == pytest.approx(0.0) and s.modd == pytest.approx(0.0)


def test_sensor_low_high_strings() -> None:
    parsed = parse_sensor_values(["Low", "100", "HIGH", "junk", None, 120])
    np.testing.assert_array_equal(parsed[[0, 1, 2, 5]], [40.0, 100.0, 400.0, 120.0])
    assert np.isnan(parsed[3]) and np.isnan(parsed[4])
    s = compute_summary(np.array(["Low", "100", "High", "150"], dtype=object), ts(4))
    assert s.time_below_54 == pytest.approx(25.0)
    assert s.time_above_250 == pytest.approx(25.0)


def test_unsorted_duplicates_and_epoch_input() -> None:
    v = np.array([100.0, 200.0, 150.0, 999.0])
    t = np.array([600.0, 0.0, 300.0, 0.0])  # duplicate t=0 keeps the first after sorting
    s = compute_summary(v, t)
    assert s.mean_glucose == pytest.approx(150.0)


def test_summary_as_dict_is_plain() -> None:
    d = compute_summary(BUCKETS, ts(BUCKETS.size)).as_dict()
    assert set(d) >= {"days_of_data", "gri_zone", "sufficient_data", "conga", "modd", "gri_hypo_component"}
    assert all(isinstance(v, (float, int, str, bool)) or v is None for v in d.values())


# ----------------------------------------------------------------------------- AGP
def test_agp_percentiles_by_hand_and_vs_numpy() -> None:
    # Five days, one reading per day at 08:10 with values 1..5 (mg/dL only matters as numbers).
    t = np.array([T0 + np.timedelta64(d, "D") + np.timedelta64(490, "m") for d in range(5)])
    p = agp_profile(np.array([5.0, 1.0, 4.0, 2.0, 3.0]), t, bin_minutes=60)
    assert p.n_readings[8] == 5 and p.n_readings.sum() == 5
    assert (p.p5[8], p.p25[8], p.p50[8], p.p75[8], p.p95[8]) == pytest.approx((1.2, 2.0, 3.0, 4.0, 4.8))
    assert np.isnan(p.p50[0])
    rng = np.random.default_rng(3)
    n = 7 * 288
    v = rng.normal(140, 40, n).clip(40, 400)
    prof = agp_profile(v, ts(n), bin_minutes=15)
    minute = (np.arange(n) * 5) % 1440
    for b in (0, 37, 95):
        sel = v[(minute // 15) == b]
        np.testing.assert_allclose(
            [prof.p5[b], prof.p25[b], prof.p50[b], prof.p75[b], prof.p95[b]],
            np.percentile(sel, [5, 25, 50, 75, 95]),
        )


def test_agp_uses_local_time_from_epoch_and_offset() -> None:
    # 00:30 UTC with a +2 h offset is 02:30 local.
    p = agp_profile(np.array([100.0]), np.array([1800.0]), bin_minutes=60, utc_offset_seconds=7200)
    assert p.n_readings[2] == 1
    with pytest.raises(ValueError):
        agp_profile(np.array([100.0]), ts(1), utc_offset_seconds=3600)


def test_daily_profiles_shape_and_values() -> None:
    n = 2 * 288
    v = np.concatenate([np.full(288, 100.0), np.full(288, 150.0)])
    dp = daily_profiles(v, ts(n), bin_minutes=60)
    assert dp.values.shape == (2, 24)
    assert str(dp.dates[0]) == "2024-03-04"
    np.testing.assert_allclose(dp.values[1], 150.0)


# ----------------------------------------------------------------------------- risk indicators
def test_risk_indicators_by_hand() -> None:
    r = long_term_risk(tir_percent=60.0, gmi=7.2, gri=45.0, gri_zone="C")
    assert r.retinopathy_beck is not None and r.microalbuminuria_beck is not None
    assert r.retinopathy_beck.hazard_ratio == pytest.approx(1.64)
    assert r.retinopathy_beck.ci95 == pytest.approx((1.51, 1.78))
    assert r.microalbuminuria_beck.hazard_ratio == pytest.approx(1.40)
    adj = r.retinopathy_hba1c_adjusted_lachin
    assert adj is not None and adj.hazard_ratio == pytest.approx(1.12) and adj.adjusted_for_hba1c
    assert r.retinopathy_beck.is_estimate and "Beck" in r.retinopathy_beck.citation
    r50 = long_term_risk(50.0, None, None, None).retinopathy_beck
    assert r50 is not None and r50.hazard_ratio == pytest.approx(1.64**2)
    r80 = long_term_risk(80.0, None, None, None).retinopathy_beck
    assert r80 is not None and r80.hazard_ratio == pytest.approx(1 / 1.64)
    assert r80.ci95 == pytest.approx((1 / 1.78, 1 / 1.51))
    assert long_term_risk(None, None, None, None).retinopathy_beck is None
    assert r.hba1c_estimate.gmi_percent == 7.2 and "Bergenstal" in r.hba1c_estimate.citation


# ----------------------------------------------------------------------------- speed
def test_ninety_days_is_fast() -> None:
    rng = np.random.default_rng(0)
    n = 90 * 288
    v = (140 + 50 * np.sin(np.arange(n) / 40) + rng.normal(0, 10, n)).clip(40, 400)
    t = ts(n)
    compute_summary(v, t)  # warm-up
    start = time.perf_counter()
    s = compute_summary(v, t)
    elapsed = time.perf_counter() - start
    assert s.sufficient_data
    # Typically ~20-40 ms; the bound is loose because CI machines are shared.
    assert elapsed < 1.0
