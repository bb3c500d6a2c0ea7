"""Metrics, AGP, risk indicators and CSV export over the API: values, units, defaults and bad input."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from api.analytics import ERR_BIN_MINUTES
from api.query import ERR_RANGE_ORDER, ERR_RANGE_TOO_LONG
from glucoscope.metrics import agp_profile, compute_summary, glycemia_risk_index
from glucoscope.patients.models import MGDL_PER_MMOLL
from glucoscope.readings.models import Treatment
from glucoscope.readings.validation import ERR_TIMESTAMP_FORMAT, ERR_UNIT
from glucoscope.web.analytics import METRIC_KEYS, _safe_text, gri_from_counts
from tests.analytics.helpers import add_readings, synthetic_days
from tests.conftest import World

pytestmark = pytest.mark.django_db


def url(world: World, what: str) -> str:
    return f"/api/v1/patients/{world.alice.pk}/{what}"


def test_metrics_have_exactly_the_issue_keys_and_match_compute_summary(world: World) -> None:
    values = synthetic_days(3)
    times = add_readings(world.alice, values)
    body = world.client("clinician").get(url(world, "metrics"), {"unit": "mg/dL"}).json()
    assert tuple(body) == METRIC_KEYS
    expected = compute_summary(np.array(values), np.array([t.timestamp() for t in times]), interval_minutes=5)
    assert body["mean_glucose"] == pytest.approx(expected.mean_glucose, abs=0.06)
    assert body["time_in_range_70_180"] == pytest.approx(expected.time_in_range_70_180, abs=0.005)
    assert body["gri"] == pytest.approx(expected.gri, abs=0.005) and body["gri_zone"] == expected.gri_zone
    assert body["mage"] == pytest.approx(expected.mage, abs=0.06)
    assert body["days_of_data"] == pytest.approx(3.0, abs=0.01)
    assert body["sufficient_data"] is False  # 3 days < 14: flagged, numbers still shown


def test_metrics_in_mmol_convert_glucose_fields_only(world: World) -> None:
    add_readings(world.alice, synthetic_days(2))
    client = world.client("patient")
    mg = client.get(url(world, "metrics"), {"unit": "mg/dL"})
    mmol = client.get(url(world, "metrics"), {"unit": "mmol/L"})
    assert mmol["Glucose-Unit"] == "mmol/L"
    a, b = mg.json(), mmol.json()
    assert b["mean_glucose"] == pytest.approx(a["mean_glucose"] / MGDL_PER_MMOLL, abs=0.01)
    assert b["sd"] == pytest.approx(a["sd"] / MGDL_PER_MMOLL, abs=0.01)
    assert b["cv"] == a["cv"] and b["gmi"] == a["gmi"] and b["time_below_70"] == a["time_below_70"]


def test_default_period_is_the_last_14_local_days(world: World) -> None:
    add_readings(world.alice, [100.0] * 10, end=timezone.now() - timedelta(days=20))  # outside the default period
    add_readings(world.alice, [200.0] * 10)
    body = world.client("patient").get(url(world, "metrics")).json()
    assert body["mean_glucose"] == 200.0
    start = timezone.datetime.fromisoformat(body["start"])
    assert timedelta(days=13) < timezone.now() - start <= timedelta(days=14)
    assert start.utcoffset() is not None and start.hour == 0  # local midnight (Europe/London)


def test_sensor_low_counts_below_54_and_empty_period_gives_nulls(world: World) -> None:
    add_readings(world.alice, ["Low", 100.0, 100.0, 100.0])
    body = world.client("patient").get(url(world, "metrics")).json()
    assert body["time_below_54"] == 25.0
    empty = world.client("patient").get(url(world, "metrics"), {"start": "2020-01-01T00:00:00Z", "end": "2020-01-02T00:00:00Z"}).json()
    assert empty["mean_glucose"] is None and empty["days_of_data"] == 0 and empty["sufficient_data"] is False


@pytest.mark.parametrize("path", ["metrics", "agp", "fhir/cgm-summary"])
@pytest.mark.parametrize(("params", "field", "message"), [
    ({"start": "yesterday"}, "start", ERR_TIMESTAMP_FORMAT),
    ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "end", ERR_RANGE_ORDER),
    ({"start": "2025-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "start", ERR_RANGE_TOO_LONG.format(days=90)),
    ({"unit": "mmol"}, "unit", ERR_UNIT),
])
def test_bad_query_is_a_field_error(world: World, path: str, params: dict[str, str], field: str, message: str) -> None:
    response = world.client("patient").get(url(world, path), params)
    assert response.status_code == 400, response.content
    assert response.json()[field] == [message]


def test_agp_percentiles_per_bin_and_daily_profiles(world: World) -> None:
    values = synthetic_days(3, seed=3)
    times = add_readings(world.alice, values)
    body = world.client("caregiver").get(url(world, "agp"), {"bin_minutes": "60"}).json()
    assert body["bin_minutes"] == 60 and len(body["percentiles"]) == 24
    first = body["percentiles"][0]
    assert set(first) == {"minute_of_day", "time", "n_readings", "p5", "p25", "p50", "p75", "p95"}
    from zoneinfo import ZoneInfo
    zone = ZoneInfo("Europe/London")
    offsets = np.array([t.astimezone(zone).utcoffset().total_seconds() for t in times])
    expected = agp_profile(np.array(values), np.array([t.timestamp() for t in times]), bin_minutes=60, utc_offset_seconds=offsets)
    for i, row in enumerate(body["percentiles"]):
        if row["n_readings"]:
            assert row["p50"] == pytest.approx(expected.p50[i], abs=0.06)  # rounded to 0.1 mg/dL
            assert row["p5"] <= row["p25"] <= row["p50"] <= row["p75"] <= row["p95"]
    assert len(body["daily_profiles"]) in (3, 4) and len(body["daily_profiles"][0]["values"]) == 24
    assert body["target_range"] == [70.0, 180.0]


@pytest.mark.parametrize("bad", ["7", "abc", "0", "-15", "1440"])
def test_agp_rejects_bins_that_do_not_divide_the_day(world: World, bad: str) -> None:
    response = world.client("patient").get(url(world, "agp"), {"bin_minutes": bad})
    assert response.status_code == 400
    assert response.json()["bin_minutes"] == [ERR_BIN_MINUTES.format(choices="5, 10, 15, 20, 30, 60")]


def test_risk_indicators_cite_beck_and_lachin_and_give_a_3_month_trend(world: World) -> None:
    add_readings(world.alice, [250.0] * 100 + [120.0] * 100)  # TIR 50 %
    body = world.client("clinician").get(url(world, "risk-indicators")).json()
    assert len(body["trend"]) == 6 and body["period_days"] == 14
    current = body["current"]
    beck = current["retinopathy_progression_beck_2019"]
    assert current["is_estimate"] is True and "not a diagnosis" in current["disclaimer"]
    assert beck["hazard_ratio"] == pytest.approx(1.64 ** 2, abs=0.01)  # 20 points below the 70 % reference
    assert beck["ci95"] == [pytest.approx(1.51 ** 2, abs=0.01), pytest.approx(1.78 ** 2, abs=0.01)]
    assert "Beck" in beck["citation"]
    assert current["microalbuminuria_beck_2019"]["hazard_ratio"] == pytest.approx(1.40 ** 2, abs=0.01)
    lachin = current["retinopathy_progression_hba1c_adjusted_lachin_2022"]
    assert lachin["hazard_ratio"] == pytest.approx(1.12 ** 2, abs=0.01) and "Lachin" in lachin["citation"]
    assert current["hba1c_estimate_gmi"]["gmi_percent"] == pytest.approx(3.31 + 0.02392 * 185, abs=0.05)
    assert body["trend"][0]["retinopathy_progression_beck_2019"] is None  # no data 3 months ago


def test_risk_indicators_reject_a_bad_end(world: World) -> None:
    response = world.client("patient").get(url(world, "risk-indicators"), {"end": "soon"})
    assert response.status_code == 400 and response.json()["end"] == [ERR_TIMESTAMP_FORMAT]


def test_export_csv_has_readings_and_treatments_and_defuses_formulas(world: World) -> None:
    add_readings(world.alice, [101.0, "High"])
    now = timezone.now()
    Treatment.objects.create(patient=world.alice, occurred_at=now, kind="note", note="=HYPERLINK(\"x\")",
                             source="app", received_at=now)
    Treatment.objects.create(patient=world.bob, occurred_at=now, kind="carbs", carbs_g=10, source="app", received_at=now)
    response = world.client("clinician").get(url(world, "export.csv"))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [r["record_type"] for r in rows] == ["reading", "reading", "treatment"]
    assert rows[0]["glucose_mg_dl"] == "101.0" and rows[1]["sensor_flag"] == "high" and rows[1]["glucose_mg_dl"] == ""
    assert rows[2]["note"].startswith("'=")


def test_export_negotiates_text_csv_and_404s_outside_scope(world: World) -> None:
    assert world.client("patient").get(url(world, "export.csv"), HTTP_ACCEPT="text/csv").status_code == 200
    response = world.client("other_clinician").get(url(world, "export.csv"), HTTP_ACCEPT="text/csv")
    assert response.status_code == 404


def test_safe_text_only_prefixes_formula_starts() -> None:
    assert _safe_text("+1") == "'+1" and _safe_text("ok") == "ok"


@pytest.mark.parametrize("values", [[40, 60, 100, 200, 300], [100] * 5, [53.9, 54, 69.9, 70, 180, 180.1, 250, 250.1]])
def test_gri_from_counts_equals_the_metric(values: list[float]) -> None:
    v = np.array(values, dtype=float)
    counts = {"very_low": int((v < 54).sum()), "low": int(((v >= 54) & (v < 70)).sum()),
              "high": int(((v > 180) & (v <= 250)).sum()), "very_high": int((v > 250).sum())}
    gri, zone = gri_from_counts(n=v.size, **counts)
    reference = glycemia_risk_index(v)
    assert reference is not None and gri == pytest.approx(reference.gri) and zone == reference.zone
