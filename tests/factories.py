from __future__ import annotations

from datetime import datetime, timedelta

import factory
import numpy as np
from django.utils import timezone

from glucoscope.patients import models


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.User
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    role = models.Role.PATIENT
    password = factory.django.Password("correct-horse-battery")


class PatientFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Patient

    user = factory.SubFactory(UserFactory, role=models.Role.PATIENT)
    time_zone = "Europe/London"
    diabetes_type = models.DiabetesType.TYPE_1
    birth_year = 1990


class CareTeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.CareTeam

    name = factory.Sequence(lambda n: f"Clinic {n}")


class VendorFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.VendorOrganization

    name = factory.Sequence(lambda n: f"Vendor {n}")


class DeviceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Device

    vendor = factory.SubFactory(VendorFactory)
    serial = factory.Sequence(lambda n: f"SN{n:06d}")
    model_name = "G7"


def consent(patient: models.Patient, team: models.CareTeam) -> models.CareTeamConsent:
    return models.CareTeamConsent.objects.create(patient=patient, care_team=team, granted_at=timezone.now())


def swing_mgdl(k: np.ndarray) -> np.ndarray:
    """Glucose (mg/dL) of reading k of a swing with a 3-hour period: regular enough that a week of it
    teaches the forecaster's output layer something the population model does not know."""
    return np.asarray(150 + 60 * np.sin(2 * np.pi * k / 36))


def store_swinging_readings(patient: models.Patient, now: datetime, days: float) -> list[datetime]:
    """`days` of 5-minute readings of the swing up to 1 minute before `now`, the patient set to UTC; their times."""
    from glucoscope.readings.models import GlucoseReading, ReadingSource

    n = int(days * 288)
    times = [now - timedelta(minutes=5 * (n - 1 - k) + 1) for k in range(n)]
    patient.time_zone = "UTC"
    patient.save(update_fields=["time_zone"])
    GlucoseReading.objects.bulk_create([
        GlucoseReading(patient=patient, measured_at=moment, value_mgdl=round(float(value), 1), source=ReadingSource.APP, received_at=now)
        for moment, value in zip(times, swing_mgdl(np.arange(n)), strict=True)
    ])
    return times
