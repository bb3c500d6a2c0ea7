"""Serving the shipped forecaster: after an ingest, stored forecasts, risk, events, registry, API."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.test import TestCase
from django.utils import timezone

from forecasting import services
from forecasting.models import Forecast, ForecastEvent, ModelVersion
from glucoscope.readings.batches import Uploader, reading_batch_ingest
from glucoscope.readings.models import PatientOutbox, ReadingSource
from tests.conftest import World

pytestmark = pytest.mark.django_db


def ingest(patient_id: int, values: list[float], *, step_minutes: int = 5, end_minutes_ago: float = 1) -> None:
    now = timezone.now()
    items = [
        {"timestamp": (now - timedelta(minutes=end_minutes_ago + step_minutes * (len(values) - 1 - i))).isoformat(),
         "value": value, "unit": "mg/dL"}
        for i, value in enumerate(values)
    ]
    with TestCase.captureOnCommitCallbacks(execute=True):
        reading_batch_ingest(uploader=Uploader(source=ReadingSource.APP, patient_id=patient_id), items=items)


def test_an_ingest_produces_a_forecast_to_120_min_with_bands_and_risk(world: World) -> None:
    ingest(world.alice.pk, [120 + (i % 6) for i in range(72)])
    forecast = Forecast.objects.get(patient=world.alice)
    assert forecast.status == "ok"
    assert [p["minutes_ahead"] for p in forecast.points] == list(range(5, 125, 5))
    assert all(p["p10"] <= p["p50"] <= p["p90"] for p in forecast.points)
    assert 0 <= forecast.risk.below_70_30min <= 1 and 0 <= forecast.risk.above_250_60min <= 1
    assert forecast.model_version.is_active and forecast.model_version.version
    assert not PatientOutbox.objects.exists(), "the forecasting stage releases the outbox"


def test_too_little_recent_data_is_an_explicit_insufficient_state(world: World) -> None:
    ingest(world.alice.pk, [120], end_minutes_ago=60)
    forecast = Forecast.objects.get(patient=world.alice)
    assert forecast.status == "insufficient_data" and forecast.points == [] and forecast.reason


def test_forecasting_twice_for_the_same_origin_stores_one_forecast(world: World) -> None:
    ingest(world.alice.pk, [110] * 36)
    services.patients_forecast(patient_ids=[world.alice.pk])
    services.patients_forecast(patient_ids=[world.alice.pk])
    assert Forecast.objects.filter(patient=world.alice).count() == 1


def test_predicted_low_event_is_raised_once_per_crossing(world: World, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PREDICTED_LOW_RISK_THRESHOLD = 0.2
    falling = [160 - 3 * i for i in range(30)]  # 160 → 73 mg/dL over 2.5 h, still falling 3 mg/dL per 5 min
    ingest(world.alice.pk, falling, end_minutes_ago=11)
    first = Forecast.objects.get(patient=world.alice)
    assert first.risk.below_70_30min >= 0.2, first.risk.below_70_30min
    assert ForecastEvent.objects.filter(patient=world.alice, kind="predicted_low").count() == 1
    ingest(world.alice.pk, [70, 67], end_minutes_ago=1)  # the same episode goes on
    assert Forecast.objects.filter(patient=world.alice).count() == 2
    assert ForecastEvent.objects.filter(patient=world.alice).count() == 1


def test_no_event_when_risk_stays_under_the_threshold(world: World, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PREDICTED_LOW_RISK_THRESHOLD = 0.99
    ingest(world.alice.pk, [160 - 3 * i for i in range(30)])
    assert not ForecastEvent.objects.exists()


def test_model_versions_switch_and_roll_back_atomically(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from django.conf import settings

    shipped = services.model_version_active()
    source = settings.BASE_DIR / settings.FORECASTER_DEFAULT_ARTIFACT
    metadata = json.loads(source.read_text())
    metadata["version"] = "2.0.0-test"
    (tmp_path / metadata["weights_file"]).write_bytes((source.parent / metadata["weights_file"]).read_bytes())
    (tmp_path / "candidate.json").write_text(json.dumps(metadata))
    candidate = services.model_version_register(artifact_path=tmp_path / "candidate.json")
    services.model_version_activate(version=candidate.version)
    assert list(ModelVersion.objects.filter(is_active=True).values_list("version", flat=True)) == ["2.0.0-test"]
    services.model_version_rollback()
    assert list(ModelVersion.objects.filter(is_active=True).values_list("version", flat=True)) == [shipped.version]
    with pytest.raises(ValueError, match="No model version"):
        services.model_version_activate(version="9.9.9")


def test_a_tampered_artifact_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from django.conf import settings

    source = settings.BASE_DIR / settings.FORECASTER_DEFAULT_ARTIFACT
    metadata = json.loads(source.read_text())
    (tmp_path / metadata["weights_file"]).write_bytes(b"not the weights")
    (tmp_path / "bad.json").write_text(json.dumps({**metadata, "version": "bad"}))
    with pytest.raises(ValueError, match="checksum"):
        services.model_version_register(artifact_path=tmp_path / "bad.json")


def test_forecast_api_returns_the_latest_in_the_requested_unit(world: World) -> None:
    url = f"/api/v1/patients/{world.alice.pk}/forecast"
    assert world.client("patient").get(url).json()["status"] == "no_forecast"
    ingest(world.alice.pk, [126 + (i % 4) for i in range(48)])
    body = world.client("clinician").get(url + "?unit=mmol/L").json()
    assert body["status"] == "ok" and body["unit"] == "mmol/L"
    assert len(body["points"]) == 24 and set(body["points"][0]) == {"minutes_ahead", "value", "p10", "p90"}
    assert 3 < body["points"][0]["value"] < 12  # mmol/L, not mg/dL
    assert set(body["risk"]) == {"below_70_30min", "below_70_60min", "below_54_30min", "below_54_60min", "above_250_60min"}
    assert "not a diagnosis" in body["disclaimer"]
    history = world.client("patient").get(f"/api/v1/patients/{world.alice.pk}/forecasts").json()
    assert len(history["results"]) == 1
    assert world.client("patient").get(url + "?unit=furlongs").status_code == 400


def test_the_stale_sweep_finds_patients_without_a_current_forecast(world: World, settings) -> None:  # type: ignore[no-untyped-def]
    settings.AFTER_INGEST_TASK = ""
    ingest(world.alice.pk, [120] * 24)
    assert not Forecast.objects.exists()
    assert services.patients_with_stale_forecast() == [world.alice.pk]
    settings.AFTER_INGEST_TASK = "forecasting.tasks.forecast_patients"
    from forecasting.tasks import sweep_stale_forecasts

    with TestCase.captureOnCommitCallbacks(execute=True):
        sweep_stale_forecasts.apply()
    assert Forecast.objects.filter(patient=world.alice).exists()
    assert services.patients_with_stale_forecast() == []


def test_patients_forecast_in_one_batch_equals_each_patient_alone(world: World) -> None:
    # Two time zones (the model reads local time of day), a sensor "Low" and a gap in one batch.
    from glucoscope.readings.models import GlucoseReading, SensorFlag

    world.bob.time_zone = "America/New_York"
    world.bob.save(update_fields=["time_zone"])
    now = timezone.now().replace(microsecond=0)
    readings = []
    for patient, phase in ((world.alice, 0), (world.bob, 2)):
        for k in range(78):
            if patient == world.bob and 40 <= k < 45:
                continue  # a 25-minute gap: masked, not interpolated
            low = patient == world.alice and k == 60
            readings.append(GlucoseReading(
                patient=patient, measured_at=now - timedelta(minutes=5 * (77 - k) + 1), source=ReadingSource.APP,
                value_mgdl=None if low else float(120 + 40 * ((k + phase) % 7) / 7), received_at=now,
                sensor_flag=SensorFlag.LOW if low else SensorFlag.NONE,
            ))
    GlucoseReading.objects.bulk_create(readings)
    ids = [world.alice.pk, world.bob.pk]
    together = {f.patient_id: f for f in services.patients_forecast(patient_ids=ids, now=now)}
    Forecast.objects.all().delete()
    alone = {pk: services.patients_forecast(patient_ids=[pk], now=now)[0] for pk in ids}
    for pk in ids:
        assert together[pk].status == alone[pk].status == "ok"
        # Stored to 0.1 mg/dL: a float32 difference between batch sizes may flip the last rounding digit.
        assert [p["minutes_ahead"] for p in together[pk].points] == [p["minutes_ahead"] for p in alone[pk].points]
        for a, b in zip(together[pk].points, alone[pk].points, strict=True):
            assert all(abs(a[q] - b[q]) <= 0.1 + 1e-9 for q in ("p10", "p50", "p90")), (a, b)
        for field in ("below_70_30min", "below_54_60min", "above_250_60min"):
            assert abs(getattr(together[pk].risk, field) - getattr(alone[pk].risk, field)) < 1e-6
    assert together[world.alice.pk].points != together[world.bob.pk].points


def test_an_upgrade_that_ships_a_new_default_model_registers_and_activates_it() -> None:
    from django.conf import settings
    from django.utils import timezone

    # As left by an earlier release: its default model registered from the same path, with its own checksum.
    ModelVersion.objects.create(
        name="forecaster", version="0.9.0-old-default", checksum="0" * 64,
        artifact_path=settings.FORECASTER_DEFAULT_ARTIFACT, metrics={}, training_summary={},
        is_active=True, activated_at=timezone.now(),
    )
    services._active.clear()
    active = services.model_version_active()
    shipped = json.loads((settings.BASE_DIR / settings.FORECASTER_DEFAULT_ARTIFACT).read_text())
    assert (active.version, active.checksum) == (shipped["version"], shipped["sha256"])
    assert list(ModelVersion.objects.filter(is_active=True).values_list("version", flat=True)) == [shipped["version"]]
    # Rolling back to the old default would serve the new file under the old label: refused.
    services.model_version_rollback()
    with pytest.raises(ValueError, match="now holds a different model"):
        services.forecaster_for(ModelVersion.objects.get(version="0.9.0-old-default"))
