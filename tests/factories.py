from __future__ import annotations

import factory
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
