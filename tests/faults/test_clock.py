"""Clock problems: readings out of order, back-filled hours later, and daylight-saving changes.

Real services on PostgreSQL, with time given through the `now` parameters the services take
(forecasting.services.patients_forecast, notifications.reminders.reminders_fire_due), never by
patching clocks. Checked: a forecast's origin is the newest reading whatever the arrival order,
and a back-filled old reading neither replaces the current forecast nor makes an old one look
current; metrics over the 25-hour and 23-hour local days count every reading once; and a reminder
fires once per local day at the right UTC instant on both sides of a DST change, including at a
repeated or skipped local time.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from forecasting.models import Forecast, ForecastStatus
from forecasting.services import patients_forecast
from glucoscope.patients.models import Patient
from glucoscope.readings.batches import Uploader, reading_batch_ingest
from glucoscope.readings.models import ReadingSource
from glucoscope.web.analytics import patient_agp, patient_metrics
from notifications.models import Notification, Reminder
from notifications.reminders import reminder_create, reminders_fire_due
from tests.factories import PatientFactory

# Not transactional: nothing is committed, so no task is published; the services are called directly.
pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def ingest(patient: Patient, moments: list[datetime], value: float = 120.0) -> int:
    outcome = reading_batch_ingest(
        uploader=Uploader(source=ReadingSource.APP, patient_id=patient.pk),
        items=[{"timestamp": m.isoformat(), "value": value + i % 7, "unit": "mg/dL"} for i, m in enumerate(moments)],
    )
    return outcome.accepted


def current_forecast(patient: Patient) -> Forecast:
    return Forecast.objects.filter(patient=patient).order_by("-origin").first()  # type: ignore[return-value]


# --- Forecasts ---------------------------------------------------------------------------------


def test_readings_arriving_newest_first_still_give_one_complete_forecast_from_the_newest_reading(
    real_services: None,
) -> None:
    patient = PatientFactory()
    now = timezone.now().replace(microsecond=0)
    newest = now - timedelta(minutes=2)
    hour = [newest - timedelta(minutes=5 * i) for i in range(13)]
    # The phone was offline: the newest reading arrives first, the hour before it afterwards, shuffled.
    assert ingest(patient, [newest]) == 1
    patients_forecast(patient_ids=[patient.pk], now=now)
    assert ingest(patient, hour[7:] + hour[1:7]) == 12
    patients_forecast(patient_ids=[patient.pk], now=now)

    forecasts = list(Forecast.objects.filter(patient=patient))
    assert [f.origin for f in forecasts] == [newest]
    # The forecast for that origin reflects the hour of context that arrived late, not the lone first reading.
    assert forecasts[0].status == ForecastStatus.OK and len(forecasts[0].points) == 24


def test_a_back_filled_old_reading_neither_replaces_the_current_forecast_nor_looks_current(real_services: None) -> None:
    patient = PatientFactory()
    now = timezone.now().replace(microsecond=0)
    newest = now - timedelta(minutes=1)
    ingest(patient, [newest - timedelta(minutes=5 * i) for i in range(13)])
    [current] = patients_forecast(patient_ids=[patient.pk], now=now)
    assert current.origin == newest and current.status == ForecastStatus.OK

    # Hours later a receiver uploads a reading from three hours ago (inside the model's context window).
    later = now + timedelta(minutes=3)
    ingest(patient, [now - timedelta(hours=3)], value=200)
    patients_forecast(patient_ids=[patient.pk], now=later)
    assert list(Forecast.objects.filter(patient=patient).values_list("pk", flat=True)) == [current.pk]
    assert current_forecast(patient).points == current.points

    # The patient stopped uploading; two hours on, older readings are back-filled: the forecast from
    # the newest reading stays the only one, and nothing is forecast from the back-filled hour.
    much_later = now + timedelta(hours=2)
    ingest(patient, [now - timedelta(hours=4, minutes=5 * i) for i in range(6)], value=90)
    assert patients_forecast(patient_ids=[patient.pk], now=much_later) == [current]
    assert list(Forecast.objects.filter(patient=patient).values_list("pk", flat=True)) == [current.pk]


def test_a_patient_with_only_back_filled_readings_gets_no_forecast_that_looks_current(real_services: None) -> None:
    patient = PatientFactory()
    now = timezone.now().replace(microsecond=0)
    oldest_hour = [now - timedelta(hours=5, minutes=5 * i) for i in range(13)]
    ingest(patient, oldest_hour)
    [forecast] = patients_forecast(patient_ids=[patient.pk], now=now)
    # Stored for the newest reading it had, and marked insufficient (stale), not an "ok" forecast from five hours ago.
    assert forecast.origin == oldest_hour[0]
    assert forecast.status == ForecastStatus.INSUFFICIENT_DATA and forecast.points == []


# --- Metrics over DST days ---------------------------------------------------------------------


def local_day(zone: str, day: date) -> tuple[datetime, datetime]:
    tz = ZoneInfo(zone)
    return datetime.combine(day, time(0), tzinfo=tz), datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)


@pytest.mark.parametrize(("zone", "day", "hours"), [
    ("Europe/London", date(2026, 10, 25), 25),    # clocks go back: 01:00-02:00 happens twice
    ("America/New_York", date(2026, 3, 8), 23),   # clocks go forward: 02:00-03:00 never happens
])
def test_metrics_of_a_dst_day_count_every_reading_of_the_local_day_once(
    real_services: None, zone: str, day: date, hours: int
) -> None:
    patient = PatientFactory(time_zone=zone)
    start, end = local_day(zone, day)
    # Python subtracts datetimes sharing a tzinfo on the wall clock (24 h); the real length is in UTC.
    assert end.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=hours)
    moments = [start.astimezone(UTC) + timedelta(minutes=5 * i) for i in range(hours * 12)]
    # In range all day except the last real hour of the local day (23:00-24:00), which is high.
    in_range, high = moments[:-12], moments[-12:]
    assert ingest(patient, in_range, value=120) == len(in_range)
    assert ingest(patient, high, value=250) == len(high)
    # Readings of the neighbouring local days must stay out of this one.
    ingest(patient, [start - timedelta(minutes=5), end], value=60)

    metrics = patient_metrics(patient=patient, start=start, end=end, unit="mg/dL")
    assert metrics["time_above_180"] == pytest.approx(100 * 12 / (hours * 12), abs=0.01)
    assert metrics["time_below_70"] == 0
    assert metrics["days_of_data"] == pytest.approx(hours / 24, abs=0.01)
    assert metrics["percent_active"] == pytest.approx(100.0)

    agp = patient_agp(patient=patient, start=start, end=end, unit="mg/dL", bin_minutes=60)
    assert agp["n_readings"] == hours * 12
    assert [profile["date"] for profile in agp["daily_profiles"]] == [day.isoformat()]
    by_hour = {b["minute_of_day"] // 60: b["n_readings"] for b in agp["percentiles"]}
    if hours == 25:
        assert by_hour[1] == 24  # the repeated hour holds both of its occurrences
    else:
        assert by_hour.get(2, 0) == 0  # the skipped hour has no readings
    assert by_hour[23] == 12 and by_hour[0] == 12


# --- Reminders over DST changes ----------------------------------------------------------------


def fire_every_quarter_hour(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """Run beat's reminder job every 15 min; returns (scheduled instant, fired at) per notification."""
    fired = []
    moment = start
    while moment <= end:
        for pk in reminders_fire_due(now=moment):
            scheduled = datetime.fromisoformat(Notification.objects.get(pk=pk).details["scheduled_for"])
            fired.append((scheduled, moment))
        moment += timedelta(minutes=15)
    return fired


@pytest.mark.parametrize(("zone", "created", "local_at", "expected_utc"), [
    ("Europe/London", datetime(2026, 10, 23, 12, tzinfo=UTC), "08:00",
     ["2026-10-24T07:00", "2026-10-25T08:00", "2026-10-26T08:00"]),
    # 01:30 happens twice on 25 October: it fires at the first (BST) occurrence only.
    ("Europe/London", datetime(2026, 10, 23, 12, tzinfo=UTC), "01:30",
     ["2026-10-24T00:30", "2026-10-25T00:30", "2026-10-26T01:30"]),
    ("America/New_York", datetime(2026, 3, 6, 18, tzinfo=UTC), "08:00",
     ["2026-03-07T13:00", "2026-03-08T12:00", "2026-03-09T12:00"]),
    # 02:30 does not exist on 8 March: it fires once, an hour later by the wall clock (03:30 EDT).
    ("America/New_York", datetime(2026, 3, 6, 18, tzinfo=UTC), "02:30",
     ["2026-03-07T07:30", "2026-03-08T07:30", "2026-03-09T06:30"]),
])
def test_a_daily_reminder_fires_once_per_local_day_at_the_right_instant_across_dst(
    real_services: None, zone: str, created: datetime, local_at: str, expected_utc: list[str]
) -> None:
    patient = PatientFactory(time_zone=zone)
    reminder = reminder_create(patient=patient, created_by=patient.user, now=created,
                               data={"kind": "medication", "local_time": local_at})
    fired = fire_every_quarter_hour(created, created + timedelta(days=3, hours=-1))
    expected = [datetime.fromisoformat(f"{text}+00:00") for text in expected_utc]
    assert [scheduled for scheduled, _ in fired] == expected
    # Each fired at the first beat tick at or after its instant (ticks are every 15 minutes).
    assert all(timedelta(0) <= at - scheduled < timedelta(minutes=15) for scheduled, at in fired)
    assert Notification.objects.filter(reminder_id=reminder.pk).count() == len(expected)
    assert Reminder.objects.get(pk=reminder.pk).next_fire_at > expected[-1]
