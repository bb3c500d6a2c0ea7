"""Storing a batch's forecasts: a fixed number of statements whatever the batch size, exactly once per origin."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from forecasting import services
from forecasting.models import Forecast, ForecastEvent, ModelVersion, RiskAssessment
from glucoscope.patients.models import Patient
from glucoscope.readings.models import GlucoseReading, ReadingSource
from tests.factories import PatientFactory

pytestmark = pytest.mark.django_db


def with_readings(count: int, *, now: datetime, hours: float = 6) -> list[int]:
    """Patients with `hours` of 5-minute readings up to a minute before `now`, a quarter of them falling towards a low."""
    patients: list[Patient] = [PatientFactory() for _ in range(count)]
    steps = int(hours * 12)
    GlucoseReading.objects.bulk_create([
        GlucoseReading(
            patient=patient, measured_at=now - timedelta(minutes=5 * (steps - 1 - k) + 1), source=ReadingSource.APP,
            value_mgdl=160 - 1.2 * k if n % 4 == 0 else 120 + 30 * ((k + n) % 9) / 9, received_at=now,
        )
        for n, patient in enumerate(patients) for k in range(steps)
    ])
    return [p.pk for p in patients]


def statements(patient_ids: list[int], *, now: datetime) -> int:
    with CaptureQueriesContext(connection) as captured:
        forecasts = services.patients_forecast(patient_ids=patient_ids, now=now)
    assert len(forecasts) == len(patient_ids) and all(f.status == "ok" for f in forecasts)
    return len(captured.captured_queries)


@pytest.mark.parametrize("threshold", [0.5, 0.0], ids=["few-events", "every-forecast-raises-an-event"])
def test_storing_a_batch_of_12_takes_as_many_statements_as_a_batch_of_3(settings, threshold: float) -> None:  # type: ignore[no-untyped-def]
    settings.PREDICTED_LOW_RISK_THRESHOLD = threshold
    now = timezone.now().replace(microsecond=0)
    small, large = with_readings(3, now=now), with_readings(12, now=now)
    services.model_version_active()  # the first call registers the shipped model: not part of a batch

    assert statements(small, now=now) == statements(large, now=now)
    assert RiskAssessment.objects.count() == 15
    if threshold == 0:
        assert ForecastEvent.objects.count() == 15  # the event path ran for every patient of both batches
    # Delivered again: everything conflicts, and that path is just as flat.
    assert statements(small, now=now) == statements(large, now=now)
    assert Forecast.objects.count() == RiskAssessment.objects.count() == 15


def test_two_runs_on_the_same_batch_store_one_forecast_and_one_risk_per_patient(settings) -> None:  # type: ignore[no-untyped-def]
    settings.PREDICTED_LOW_RISK_THRESHOLD = 0.0  # every new forecast raises an event: one each, not two
    now = timezone.now().replace(microsecond=0)
    ids = with_readings(12, now=now)
    first = services.patients_forecast(patient_ids=ids, now=now)
    second = services.patients_forecast(patient_ids=list(reversed(ids)), now=now)

    assert sorted(f.pk for f in first) == sorted(f.pk for f in second)
    for model in (Forecast, RiskAssessment, ForecastEvent):
        assert sorted(model.objects.values_list("forecast__patient_id" if model is not Forecast else "patient_id", flat=True)) == sorted(ids)
    assert {f.pk: f.points for f in first} == {f.pk: f.points for f in second}, "the second run returns what the first stored"


def test_insufficient_forecasts_of_a_batch_are_completed_in_place_once(settings) -> None:  # type: ignore[no-untyped-def]
    settings.PREDICTED_LOW_RISK_THRESHOLD = 0.0
    now = timezone.now().replace(microsecond=0)
    ids = with_readings(4, now=now, hours=1 / 12)  # only the newest reading of each: not enough context
    insufficient = services.patients_forecast(patient_ids=ids, now=now)
    assert {f.status for f in insufficient} == {"insufficient_data"} and not RiskAssessment.objects.exists()

    # The hour before the newest reading arrives late: the same origins, now with context.
    newest = {p: GlucoseReading.objects.get(patient_id=p).measured_at for p in ids}
    GlucoseReading.objects.bulk_create([
        GlucoseReading(patient_id=p, measured_at=newest[p] - timedelta(minutes=5 * k), source=ReadingSource.APP,
                       value_mgdl=120.0 + k, received_at=now)
        for p in ids for k in range(1, 13)
    ])
    completed = services.patients_forecast(patient_ids=ids, now=now)
    again = services.patients_forecast(patient_ids=ids, now=now)

    assert [f.pk for f in completed] == [f.pk for f in insufficient] and {f.status for f in completed} == {"ok"}
    assert {f.status for f in again} == {"ok"} and all(len(f.points) == 24 for f in again)
    assert Forecast.objects.count() == RiskAssessment.objects.count() == ForecastEvent.objects.count() == 4


def test_a_batch_raises_predicted_low_only_where_the_risk_crosses_upwards(settings) -> None:  # type: ignore[no-untyped-def]
    settings.PREDICTED_LOW_RISK_THRESHOLD = 1e-6  # below every risk the model gives these patients
    now = timezone.now().replace(microsecond=0)
    ids = with_readings(3, now=now)
    [was_high, was_low, first] = ids
    version = services.model_version_active()
    for patient_id, risk in ((was_high, 0.9), (was_low, 0.0)):  # the previous origin's risk, for two of the three
        earlier = Forecast.objects.create(patient_id=patient_id, origin=now - timedelta(minutes=6), model_version=version, status="ok")
        RiskAssessment.objects.create(forecast=earlier, below_70_30min=risk, below_70_60min=risk, below_54_30min=0,
                                      below_54_60min=0, above_250_60min=0)

    forecasts = services.patients_forecast(patient_ids=ids, now=now)
    assert all(f.risk.below_70_30min >= 1e-6 for f in forecasts)
    # At or above the threshold before: the same episode, no new event. Below it before, or no earlier
    # forecast at all: a crossing.
    assert sorted(ForecastEvent.objects.values_list("patient_id", flat=True)) == sorted([was_low, first])


def test_the_active_version_costs_one_small_statement_and_a_switch_is_seen_at_the_next_call(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from django.conf import settings

    shipped = services.model_version_active()
    with CaptureQueriesContext(connection) as captured:
        assert services.model_version_active() is shipped
    [query] = captured.captured_queries
    assert "metrics" not in query["sql"], "the cache check reads the id, not the row's JSON"

    source = settings.BASE_DIR / settings.FORECASTER_DEFAULT_ARTIFACT
    metadata = json.loads(source.read_text())
    metadata["version"] = "2.0.0-cache-test"
    (tmp_path / metadata["weights_file"]).write_bytes((source.parent / metadata["weights_file"]).read_bytes())
    (tmp_path / "candidate.json").write_text(json.dumps(metadata))
    services.model_version_activate(version=services.model_version_register(artifact_path=tmp_path / "candidate.json").version)
    assert services.model_version_active().version == "2.0.0-cache-test"
    services.model_version_rollback()
    assert services.model_version_active().pk == shipped.pk
    # A version row that is gone (a test database flushed under a worker) is not served from the cache.
    ModelVersion.objects.all().delete()
    assert services.model_version_active().pk != shipped.pk
