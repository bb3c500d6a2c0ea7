"""Per-patient output layers in the service: tuning, storage, the daily sweep, and use by the worker.

The worker's forecast for a personalised patient is compared with the model called directly
(forecasting/ml, no Django) with that patient's stored layer.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from io import StringIO

import numpy as np
import pytest
from django.core.management import call_command
from django.utils import timezone

from forecasting import services, tasks
from forecasting.ml.data import SubjectReadings, batch_from_subjects
from forecasting.ml.networks import PatchGRUForecaster, PersonalOutputLayer
from forecasting.models import Forecast, PatientPersonalisation
from glucoscope.readings.treatments import treatment_batch_ingest
from tests.conftest import World, bearer
from tests.factories import store_swinging_readings, swing_mgdl

pytestmark = pytest.mark.django_db


def _p50(forecast: Forecast) -> list[float]:
    return [point["p50"] for point in forecast.points]


@pytest.fixture
def now() -> datetime:
    return timezone.now().replace(microsecond=0)


def test_a_week_of_readings_gives_the_patient_their_own_layer_and_the_worker_uses_it(world: World, now: datetime) -> None:
    times = store_swinging_readings(world.alice, now, days=8)
    store_swinging_readings(world.bob, now, days=0.5)  # the same last 6 hours, no history
    row = services.patient_personalise(patient_id=world.alice.pk, now=now)
    assert row.kept and row.personal_loss < 0.99 * row.population_loss
    assert (row.data_start, row.data_end, row.days_of_data) == (times[0], times[-1], 8.0)
    assert row.model_version == services.model_version_active() and row.fitted_at == now

    forecasts = {f.patient_id: f for f in services.patients_forecast(patient_ids=[world.alice.pk, world.bob.pk], now=now)}
    alice, bob = forecasts[world.alice.pk], forecasts[world.bob.pk]
    assert alice.personalisation_id == row.pk and bob.personalisation_id is None

    # The same call on the model directly, with the stored layer.
    forecaster = services.forecaster_for(row.model_version)
    assert isinstance(forecaster.network, PatchGRUForecaster)
    layer = PersonalOutputLayer.from_bytes(bytes(row.output_layer), forecaster.network)
    last = times[-78:]
    subject = SubjectReadings("direct", np.array([int(t.timestamp()) for t in last], dtype=np.int64),
                              np.round(swing_mgdl(np.arange(len(times)))[-78:], 1), np.zeros(78, dtype=np.int8))
    direct = forecaster.forecast_batch(batch_from_subjects([subject]), personal={0: layer}).quantiles[0, :, 1]
    np.testing.assert_allclose(_p50(alice), direct, atol=0.05 + 1e-6)
    # Bob's last 6 hours are the same readings; only Alice's layer makes her forecast differ.
    assert max(abs(a - b) for a, b in zip(_p50(alice), _p50(bob), strict=True)) > 1.0

    body = bearer(world.alice.user).get(f"/api/v1/patients/{world.alice.pk}/forecast").json()
    assert body["personalised"] is True and body["status"] == "ok"
    assert bearer(world.bob.user).get(f"/api/v1/patients/{world.bob.pk}/forecast").json()["personalised"] is False


def test_too_little_data_or_no_patient_is_refused_with_the_reason_and_stores_nothing(world: World, now: datetime) -> None:
    store_swinging_readings(world.alice, now, days=3)
    with pytest.raises(services.PersonalisationRefused, match=r"at least 7 days of readings, this patient has 3\.0"):
        services.patient_personalise(patient_id=world.alice.pk, now=now)
    with pytest.raises(services.PersonalisationRefused, match="there is no patient 987654"):
        services.patient_personalise(patient_id=987654, now=now)
    assert not PatientPersonalisation.objects.exists()


def _copy(row: PatientPersonalisation, **changes: object) -> PatientPersonalisation:
    fields = {f.name: getattr(row, f.name) for f in PatientPersonalisation._meta.concrete_fields if f.name != "id"}
    return PatientPersonalisation.objects.create(**(fields | changes))


def test_the_newest_tuning_decides_and_one_that_was_not_kept_means_the_population_layer(world: World, now: datetime) -> None:
    store_swinging_readings(world.alice, now, days=8)
    kept = services.patient_personalise(patient_id=world.alice.pk, now=now - timedelta(minutes=10))
    assert kept is not None
    _copy(kept, fitted_at=now, output_layer=None, personal_loss=kept.population_loss)
    [forecast] = services.patients_forecast(patient_ids=[world.alice.pk], now=now)
    assert forecast.personalisation_id is None


def test_a_forecast_with_logged_treatments_or_without_a_current_reading_does_not_use_the_layer(world: World, now: datetime) -> None:
    store_swinging_readings(world.alice, now, days=8)
    store_swinging_readings(world.bob, now - timedelta(minutes=30), days=8)  # newest reading 31 min old: stale
    for patient in (world.alice, world.bob):
        assert services.patient_personalise(patient_id=patient.pk, now=now - timedelta(minutes=10)).kept  # type: ignore[union-attr]
    # Layers are tuned from glucose alone: a forecast that reads Alice's logged meal uses the population layer.
    outcome = treatment_batch_ingest(user=world.alice.user, items=[{"kind": "carbs", "carbs_g": 40, "timestamp": (now - timedelta(hours=1)).isoformat()}])
    assert outcome.accepted == 1
    forecasts = {f.patient_id: f for f in services.patients_forecast(patient_ids=[world.alice.pk, world.bob.pk], now=now)}
    assert forecasts[world.alice.pk].status == "ok" and forecasts[world.alice.pk].personalisation_id is None
    assert forecasts[world.bob.pk].status == "insufficient_data" and forecasts[world.bob.pk].personalisation_id is None


def test_layers_are_cached_per_process_within_a_bound_and_read_again_when_evicted(
    world: World, now: datetime, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for patient in (world.alice, world.bob):
        store_swinging_readings(patient, now, days=8)
        services.patient_personalise(patient_id=patient.pk, now=now - timedelta(minutes=10))
    monkeypatch.setattr(services, "LAYER_CACHE_SIZE", 1)
    services._layers.clear()
    for _ in range(2):
        version = services.model_version_active()
        patients = services.patients_with_personalisation_keys(patient_ids=[world.alice.pk, world.bob.pk], version=version)
        layers = services.personal_layers(patients=patients, version=version)
        assert set(layers) == {world.alice.pk, world.bob.pk} and len(services._layers) == 1


def test_personalisation_runs_on_its_own_queue_so_forecasts_never_wait_behind_it() -> None:
    from glucoscope.celery import app

    queue = {name: app.amqp.router.route({}, name)["queue"].name for name in (
        "forecasting.personalise_patient", "forecasting.sweep_personalisation", "forecasting.forecast_patients")}
    assert queue == {"forecasting.personalise_patient": "batch", "forecasting.sweep_personalisation": "batch",
                     "forecasting.forecast_patients": "forecasting"}


def test_patients_are_due_with_seven_days_of_readings_and_again_after_the_refresh_period(world: World, now: datetime) -> None:
    store_swinging_readings(world.alice, now, days=7.5)
    store_swinging_readings(world.bob, now, days=6.5)
    assert services.patients_due_for_personalisation(now=now) == [world.alice.pk]
    services.patient_personalise(patient_id=world.alice.pk, now=now)
    assert services.patients_due_for_personalisation(now=now) == []
    assert services.patients_due_for_personalisation(now=now + timedelta(days=7, minutes=1)) == [world.alice.pk]


def test_the_task_tunes_only_a_patient_who_is_due_and_the_sweep_queues_every_due_patient(world: World) -> None:
    now = timezone.now().replace(microsecond=0)
    store_swinging_readings(world.alice, now, days=8)
    store_swinging_readings(world.bob, now, days=8)
    assert tasks.personalise_patient(world.alice.pk) is True
    assert tasks.personalise_patient(world.alice.pk) is None  # done for this version: idempotent
    assert tasks.sweep_personalisation() == 1  # only Bob is left; tasks run eagerly in tests
    assert set(PatientPersonalisation.objects.values_list("patient_id", flat=True)) == {world.alice.pk, world.bob.pk}
    assert tasks.sweep_personalisation() == 0


def test_the_command_reports_each_patient_and_skips_those_it_cannot_tune(world: World) -> None:
    now = timezone.now().replace(microsecond=0)
    store_swinging_readings(world.alice, now, days=8)
    store_swinging_readings(world.bob, now, days=2)
    out = StringIO()
    call_command("personalise_patients", "--patient", str(world.alice.pk), "--patient", str(world.bob.pk),
                 "--patient", "987654", "--no-progress", stdout=out)
    text = out.getvalue()
    assert f"{world.alice.pk} | 8.0 |" in text and "| yes" in text
    assert f"{world.bob.pk} | skipped: patient {world.bob.pk}: personalisation needs at least 7 days" in text
    assert "skipped: there is no patient 987654" in text
    assert "3 patients: 1 personalised, 0 kept the population layer, 2 skipped." in text
    out = StringIO()
    call_command("personalise_patients", "--no-progress", stdout=out)
    assert out.getvalue().strip() == "No patient is due for personalisation."
