"""One row of every kind of patient data, for the export, deletion and response-key tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time, timedelta

from django.utils import timezone

from forecasting import services as forecasting_services
from forecasting.models import (
    Forecast,
    ForecastEvent,
    ForecastStatus,
    GlucotypeAssignment,
    GlucotypeModel,
    PatientPersonalisation,
    RiskAssessment,
)
from glucoscope.patients.models import Patient
from glucoscope.readings.models import (
    GlucoseReading,
    NightscoutDocument,
    PatientOutbox,
    PatientSummary,
    ReadingSource,
    Treatment,
)
from notifications.models import AlertEpisode, DeviceToken, Notification, Preference, Reminder


@dataclass
class Seeded:
    push_token: str
    forecast: Forecast


def seed_patient_data(patient: Patient, *, readings: int = 5, tag: str = "x") -> Seeded:
    now = timezone.now()
    rows = [GlucoseReading(patient=patient, measured_at=now - timedelta(minutes=5 * (i + 1)), value_mgdl=100 + i,
                           direction="Flat", source=ReadingSource.APP, received_at=now) for i in range(readings)]
    GlucoseReading.objects.bulk_create(rows)
    latest = GlucoseReading.objects.filter(patient=patient).order_by("-measured_at").first()
    PatientSummary.objects.update_or_create(patient=patient, defaults={"latest_reading": latest, "readings_last_24h": readings,
                                                                       "computed_at": now})
    PatientOutbox.objects.update_or_create(patient=patient, defaults={"dirty_at": now})
    Treatment.objects.create(patient=patient, occurred_at=now - timedelta(hours=1), kind="carbs", carbs_g=30,
                             source=ReadingSource.APP, received_at=now, note=f"lunch {tag}")
    NightscoutDocument.objects.create(patient=patient, collection="devicestatus", created_at=now,
                                      document={"device": f"phone-{tag}"}, digest=f"digest-{patient.pk}-{tag}")
    version = forecasting_services.model_version_active()
    personalisation = PatientPersonalisation.objects.create(
        patient=patient, model_version=version, fitted_at=now, data_start=now - timedelta(days=8), data_end=now,
        days_of_data=8.0, fit_windows=1800, check_windows=460, population_loss=0.2, personal_loss=0.18,
        output_layer=bytes(4 * 9288),
    )
    forecast = Forecast.objects.create(
        patient=patient, origin=now - timedelta(minutes=2), model_version=version, personalisation=personalisation,
        status=ForecastStatus.OK,
        points=[{"minutes_ahead": m, "p10": 90.0, "p50": 100.0, "p90": 110.0} for m in range(5, 125, 5)],
    )
    RiskAssessment.objects.create(forecast=forecast, below_70_30min=0.6, below_70_60min=0.6, below_54_30min=0.1,
                                  below_54_60min=0.1, above_250_60min=0.01)
    ForecastEvent.objects.create(patient=patient, forecast=forecast, kind="predicted_low", probability=0.6, threshold=0.5)
    model = GlucotypeModel.objects.create(
        metric="euclidean", representation="sorted", class_names=["low", "moderate", "severe"],
        class_mean_sd_mgdl=[6.9, 9.7, 17.3], period_start=now - timedelta(days=14), period_end=now, n_patients=1,
        n_windows=10, fit_seconds=0.1, model_json={},
    )
    GlucotypeAssignment.objects.create(patient=patient, model=model, glucotype="moderate", n_windows=10, assigned_at=now,
                                       shares={"low": 0.2, "moderate": 0.5, "severe": 0.3})
    notification = Notification.objects.create(patient=patient, recipient=patient.user, kind="low", title="Glucose alert",
                                               body=f"low {tag}", send_after=now)
    AlertEpisode.objects.create(patient=patient, kind="low", started_at=now, last_seen_at=now, notification=notification)
    Reminder.objects.create(patient=patient, kind="glucose_check", local_time=time(8), start_date=now.date(),
                            next_fire_at=now + timedelta(days=1), label=f"check {tag}")
    Preference.objects.get_or_create(patient=patient)
    push_token = f"fcm-push-token-{tag}-{patient.pk}-secret"
    DeviceToken.objects.create(user=patient.user, token=push_token, platform="android", last_seen_at=now)
    return Seeded(push_token=push_token, forecast=forecast)
