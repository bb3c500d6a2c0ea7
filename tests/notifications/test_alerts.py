"""Alert rules applied to patients: one alert per episode, cooldowns, quiet hours, the daily cap, escalation."""

from __future__ import annotations

from datetime import time, timedelta

import pytest
from django.utils import timezone

from forecasting.models import Forecast, ForecastEvent, ModelVersion, RiskAssessment
from glucoscope.patients.models import CaregiverLink, Role
from notifications import services
from notifications.models import AlertEpisode, Kind, Notification, Status
from tests.factories import PatientFactory, UserFactory
from tests.notifications.conftest import add_readings

pytestmark = pytest.mark.django_db


def alerts(patient, kind: str | None = None) -> list[Notification]:  # type: ignore[no-untyped-def]
    query = Notification.objects.filter(patient=patient).order_by("pk")
    return list(query.filter(kind=kind) if kind else query)


def evaluate(patient, now=None) -> list[int]:  # type: ignore[no-untyped-def]
    return services.patients_evaluate_alerts(patient_ids=[patient.pk], now=now or timezone.now())


def test_an_urgent_low_alerts_once_per_episode_not_once_per_reading() -> None:
    patient = PatientFactory()
    now = timezone.now()
    add_readings(patient, [90, 75, 60, 52], end=now)
    assert len(evaluate(patient, now)) == 1
    add_readings(patient, [50], end=now + timedelta(minutes=5))
    assert evaluate(patient, now + timedelta(minutes=5)) == []
    [alert] = alerts(patient)
    assert alert.kind == Kind.URGENT_LOW and alert.details["mgdl"] == 52
    # The urgent low superseded the plain low: one push, not two.
    assert AlertEpisode.objects.filter(patient=patient, ended_at__isnull=True).count() == 2


def test_a_new_episode_inside_the_cooldown_does_not_alert_again_but_after_it_does() -> None:
    patient = PatientFactory()
    start = timezone.now() - timedelta(hours=3)
    add_readings(patient, [80, 66], end=start)
    evaluate(patient, start)
    add_readings(patient, [75, 80], end=start + timedelta(minutes=10))
    evaluate(patient, start + timedelta(minutes=10))  # episode over
    add_readings(patient, [65], end=start + timedelta(minutes=15))
    evaluate(patient, start + timedelta(minutes=15))  # new episode, within the 30 min cooldown
    assert len(alerts(patient, Kind.LOW)) == 1
    add_readings(patient, [80, 85], end=start + timedelta(minutes=25))
    evaluate(patient, start + timedelta(minutes=25))
    add_readings(patient, [64], end=start + timedelta(minutes=50))
    evaluate(patient, start + timedelta(minutes=50))
    assert len(alerts(patient, Kind.LOW)) == 2


def forecast_with_risk(patient, probability: float, *, origin=None, event: bool = True) -> Forecast:  # type: ignore[no-untyped-def]
    version, _ = ModelVersion.objects.get_or_create(name="test", version="1", defaults={"checksum": "x", "artifact_path": "x"})
    forecast = Forecast.objects.create(patient=patient, origin=origin or timezone.now(), model_version=version, status="ok")
    RiskAssessment.objects.create(forecast=forecast, below_70_30min=probability, below_70_60min=probability,
                                  below_54_30min=0.0, below_54_60min=0.0, above_250_60min=0.0)
    if event:
        ForecastEvent.objects.create(patient=patient, forecast=forecast, kind="predicted_low", probability=probability, threshold=0.5)
    return forecast


def test_a_predicted_low_event_becomes_one_push_with_the_event_in_its_details() -> None:
    patient = PatientFactory()
    now = timezone.now()
    add_readings(patient, [130, 115, 100, 88], end=now)
    forecast = forecast_with_risk(patient, 0.8, origin=now)
    evaluate(patient, now)
    [alert] = alerts(patient)
    assert alert.kind == Kind.PREDICTED_LOW and alert.details["probability"] == 0.8
    assert alert.details["forecast_event_id"] == forecast.events.get().pk


def test_the_patients_own_predicted_low_threshold_applies() -> None:
    patient = PatientFactory()
    services.preference_update(patient=patient, changes={"predicted_low_probability": 0.9})
    now = timezone.now()
    add_readings(patient, [130, 115, 100, 88], end=now)
    forecast_with_risk(patient, 0.8, origin=now)
    evaluate(patient, now)
    assert alerts(patient) == []


def patients_for_a_batch(count: int, now):  # type: ignore[no-untyped-def]
    """`count` patients whose evaluation reads every input: readings, a forecast with risk and its
    predicted_low event, an active app, an open low episode that goes on and an open high one that
    ends; the last patient has an urgent low and no episode yet, so one alert is created per batch."""
    patients = []
    for _ in range(count - 1):
        patient = PatientFactory()
        add_readings(patient, [80, 70, 60], end=now)
        forecast_with_risk(patient, 0.8, origin=now)
        services.device_register(user=patient.user, token=f"tok-batch-{patient.pk}", platform="android")
        for kind in (Kind.LOW, Kind.HIGH):
            AlertEpisode.objects.create(patient=patient, kind=kind, started_at=now - timedelta(minutes=20),
                                        last_seen_at=now - timedelta(minutes=5))
        patients.append(patient)
    urgent = PatientFactory()
    add_readings(urgent, [70, 60, 52], end=now)
    return [*patients, urgent]


def test_a_batch_costs_the_same_number_of_queries_for_3_patients_as_for_12() -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    now = timezone.now()
    small, large = patients_for_a_batch(3, now), patients_for_a_batch(12, now)
    counts = []
    for batch in (small, large):
        with CaptureQueriesContext(connection) as queries:
            created = services.patients_evaluate_alerts(patient_ids=[p.pk for p in batch], now=now)
        counts.append(len(queries))
        assert [n.kind for n in Notification.objects.filter(pk__in=created)] == [Kind.URGENT_LOW]
    assert counts[0] == counts[1], counts
    steady = large[:-1]
    assert set(AlertEpisode.objects.filter(patient__in=steady, ended_at__isnull=True).values_list("kind", "last_seen_at")) == {(Kind.LOW, now)}
    assert AlertEpisode.objects.filter(patient__in=steady, kind=Kind.HIGH, ended_at=now).count() == len(steady)


def local_now_at(patient, hour: int):  # type: ignore[no-untyped-def]
    """An instant today (or yesterday) when it is `hour`:00 in the patient's zone."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(patient.time_zone)
    local = timezone.now().astimezone(zone).replace(hour=hour, minute=0, second=0, microsecond=0)
    if local > timezone.now():
        local -= timedelta(days=1)
    return local


def test_quiet_hours_suppress_a_low_but_never_an_urgent_low() -> None:
    patient = PatientFactory(time_zone="America/New_York")
    services.preference_update(patient=patient, changes={"quiet_start": "22:00", "quiet_end": "07:00"})
    night = local_now_at(patient, 3)
    add_readings(patient, [80, 66], end=night)
    evaluate(patient, night)
    [low] = alerts(patient)
    assert (low.status, low.reason) == (Status.SUPPRESSED, "quiet_hours")
    add_readings(patient, [50], end=night + timedelta(minutes=5))
    evaluate(patient, night + timedelta(minutes=5))
    urgent = alerts(patient, Kind.URGENT_LOW)[0]
    assert urgent.status != Status.SUPPRESSED


def test_the_daily_cap_suppresses_non_urgent_pushes(settings) -> None:
    settings.PUSH_MAX_PER_PATIENT_PER_DAY = 1
    patient = PatientFactory()
    first = services.notification_create(patient=patient, recipient=patient.user, kind=Kind.HIGH)
    second = services.notification_create(patient=patient, recipient=patient.user, kind=Kind.RISING_FAST)
    urgent = services.notification_create(patient=patient, recipient=patient.user, kind=Kind.URGENT_LOW)
    assert first and second and urgent
    reminder = services.notification_create(patient=patient, recipient=patient.user, kind=Kind.REMINDER)
    assert (first.status, second.status, second.reason, urgent.status) == (Status.QUEUED, Status.SUPPRESSED, "daily_cap", Status.QUEUED)
    assert reminder and reminder.status == Status.QUEUED  # scheduled by the patient: never capped


def test_disabled_kinds_are_recorded_as_suppressed() -> None:
    patient = PatientFactory()
    services.preference_update(patient=patient, changes={"disabled_kinds": ["high"]})
    notification = services.notification_create(patient=patient, recipient=patient.user, kind=Kind.HIGH)
    assert notification and (notification.status, notification.reason) == (Status.SUPPRESSED, "disabled_by_patient")


def test_an_unacknowledged_urgent_low_escalates_to_followers_once_and_is_flagged_to_the_care_team() -> None:
    patient = PatientFactory()
    follower = UserFactory(role=Role.CAREGIVER)
    CaregiverLink.objects.create(patient=patient, caregiver=follower)
    services.preference_update(patient=patient, changes={"followers": [follower.pk], "escalate_after_minutes": 15})
    now = timezone.now()
    add_readings(patient, [60, 50], end=now)
    [alert_id] = evaluate(patient, now)
    assert services.escalations_due(now=now + timedelta(minutes=10)) == []
    [escalation_id] = services.escalations_due(now=now + timedelta(minutes=16))
    assert services.escalations_due(now=now + timedelta(minutes=20)) == []
    escalation = Notification.objects.get(pk=escalation_id)
    assert (escalation.kind, escalation.recipient, escalation.parent_id) == (Kind.ESCALATION, follower, alert_id)
    assert Notification.objects.get(pk=alert_id).flagged_to_care_team_at is not None
    # The follower acknowledging acknowledges the patient's alert.
    services.notification_ack(notification=escalation)
    assert Notification.objects.get(pk=alert_id).acked_at is not None


def test_an_acknowledged_urgent_low_does_not_escalate() -> None:
    patient = PatientFactory()
    follower = UserFactory(role=Role.CAREGIVER)
    CaregiverLink.objects.create(patient=patient, caregiver=follower)
    services.preference_update(patient=patient, changes={"followers": [follower.pk]})
    now = timezone.now()
    add_readings(patient, [50], end=now)
    [alert_id] = evaluate(patient, now)
    services.notification_ack(notification=Notification.objects.get(pk=alert_id))
    assert services.escalations_due(now=now + timedelta(hours=1)) == []


def test_a_revoked_follower_is_not_escalated_to() -> None:
    patient = PatientFactory()
    follower = UserFactory(role=Role.CAREGIVER)
    link = CaregiverLink.objects.create(patient=patient, caregiver=follower)
    services.preference_update(patient=patient, changes={"followers": [follower.pk]})
    link.revoked_at = timezone.now()
    link.save()
    now = timezone.now()
    add_readings(patient, [50], end=now)
    evaluate(patient, now)
    assert services.escalations_due(now=now + timedelta(hours=1)) == []


def test_a_stale_sensor_is_found_by_the_sweeper_when_the_app_is_active() -> None:
    from glucoscope.readings.services import patient_summaries_refresh

    patient = PatientFactory()
    services.device_register(user=patient.user, token="tok-stale", platform="ios")
    add_readings(patient, [120, 121], end=timezone.now() - timedelta(minutes=40))
    patient_summaries_refresh(patient_ids=[patient.pk])
    assert services.patients_with_stale_sensor() == [patient.pk]
    evaluate(patient)
    [alert] = alerts(patient)
    assert alert.kind == Kind.STALE_SENSOR


def test_the_forecasting_stage_runs_the_alert_rules_after_forecasting(django_capture_on_commit_callbacks) -> None:
    from forecasting.tasks import forecast_patients

    patient = PatientFactory()
    add_readings(patient, [70 + 3 * i for i in range(20, 0, -1)] + [52])
    forecast_patients.apply(args=[[patient.pk], {}]).get()
    assert [n.kind for n in alerts(patient)] == [Kind.URGENT_LOW]


def test_quiet_hours_wrap_midnight() -> None:
    from datetime import datetime

    patient = PatientFactory()
    preference = services.preference_update(patient=patient, changes={"quiet_start": "22:00", "quiet_end": "07:00"})
    assert preference.quiet_start == time(22, 0)
    for hour, quiet in ((21, False), (22, True), (2, True), (7, False), (12, False)):
        assert services.in_quiet_hours(preference=preference, local=datetime(2026, 1, 1, hour, 0)) is quiet, hour
