"""The daily personalisation sweep runs on a real Celery worker, and the worker's next forecast uses the layer."""

from __future__ import annotations

import subprocess
from datetime import timedelta

import pytest
from django.utils import timezone

from forecasting.models import Forecast, PatientPersonalisation
from forecasting.tasks import sweep_personalisation
from tests.factories import PatientFactory, store_swinging_readings
from tests.integration.conftest import wait_for
from tests.integration.test_worker_processing import post_readings

pytestmark = pytest.mark.integration


def test_the_sweep_tunes_a_due_patient_on_the_worker_and_their_next_forecast_is_personalised(
    celery_worker_process: subprocess.Popen[bytes],
) -> None:
    patient, newcomer = PatientFactory(), PatientFactory()
    store_swinging_readings(patient, timezone.now().replace(microsecond=0) - timedelta(minutes=4), days=8)
    store_swinging_readings(newcomer, timezone.now().replace(microsecond=0), days=1)
    sweep_personalisation.delay()
    wait_for(lambda: PatientPersonalisation.objects.filter(patient=patient).exists(), what="the worker to tune the patient's layer")
    row = PatientPersonalisation.objects.get(patient=patient)
    assert row.kept and row.days_of_data == 8.0
    assert not PatientPersonalisation.objects.filter(patient=newcomer).exists()  # one day of readings: not due

    assert post_readings(patient, [0], value=150).status_code == 200
    wait_for(lambda: Forecast.objects.filter(patient=patient).exists(), what="the worker to forecast after the POST")
    forecast = Forecast.objects.get(patient=patient)
    assert forecast.status == "ok" and forecast.personalisation_id == row.pk
