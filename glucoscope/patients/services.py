"""Writes for people, teams, consent, vendors and credentials. Secrets are returned once and stored hashed."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import cast

from django.db import transaction
from django.utils import timezone

from glucoscope.patients.credentials import nightscout_secret_digest, nightscout_token_digest
from glucoscope.patients.models import (
    CaregiverLink,
    CareTeam,
    CareTeamConsent,
    CareTeamMembership,
    Device,
    NightscoutCredential,
    Patient,
    Role,
    User,
    VendorApiKey,
    VendorOrganization,
)


def user_upsert(*, username: str, role: str, password: str, first_name: str = "", last_name: str = "") -> User:
    user, _ = User.objects.get_or_create(username=username, defaults={"role": role})
    user.role = role
    user.first_name, user.last_name = first_name, last_name
    user.set_password(password)
    user.save()
    return user


@transaction.atomic
def patient_upsert(*, username: str, password: str, time_zone: str, diabetes_type: str, birth_year: int | None,
                   preferred_unit: str = "mg/dL", first_name: str = "", last_name: str = "") -> Patient:
    user = user_upsert(username=username, role=Role.PATIENT, password=password, first_name=first_name, last_name=last_name)
    patient, _ = Patient.objects.update_or_create(
        user=user,
        defaults={"time_zone": time_zone, "diabetes_type": diabetes_type, "birth_year": birth_year,
                  "preferred_unit": preferred_unit},
    )
    patient.full_clean()
    return patient


def care_team_add_clinician(*, care_team: CareTeam, clinician: User) -> None:
    CareTeamMembership.objects.get_or_create(care_team=care_team, clinician=clinician)


def consent_grant(*, patient: Patient, care_team: CareTeam) -> CareTeamConsent:
    active = CareTeamConsent.objects.filter(patient=patient, care_team=care_team, revoked_at__isnull=True).first()
    return active or CareTeamConsent.objects.create(patient=patient, care_team=care_team, granted_at=timezone.now())


def consent_revoke(*, patient: Patient, care_team: CareTeam) -> int:
    return CareTeamConsent.objects.filter(patient=patient, care_team=care_team, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )


ERR_NO_SUCH_CAREGIVER = "No caregiver account with this username."
ERR_NO_SUCH_CARE_TEAM = "No care team with this id."


class SharingError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def consent_grant_by_id(*, patient: Patient, care_team_id: int) -> CareTeamConsent:
    care_team = CareTeam.objects.filter(pk=care_team_id).first()
    if care_team is None:
        raise SharingError("care_team", ERR_NO_SUCH_CARE_TEAM)
    return consent_grant(patient=patient, care_team=care_team)


def caregiver_invite(*, patient: Patient, username: str) -> CaregiverLink:
    """Give a caregiver account read access to the patient (re-inviting restores a revoked link)."""
    caregiver = User.objects.filter(username=username, role=Role.CAREGIVER, is_active=True).first()
    if caregiver is None:
        raise SharingError("username", ERR_NO_SUCH_CAREGIVER)
    link, _ = CaregiverLink.objects.update_or_create(patient=patient, caregiver=caregiver, defaults={"revoked_at": None})
    return link


def caregiver_revoke(*, patient: Patient, caregiver_id: int) -> int:
    return CaregiverLink.objects.filter(patient=patient, caregiver_id=caregiver_id, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )


def vendor_api_key_create(*, vendor: VendorOrganization, name: str) -> tuple[VendorApiKey, str]:
    """Returns the key object and the plaintext key, which is shown this once and never stored."""
    api_key, plaintext = VendorApiKey.objects.create_key(name=name, vendor=vendor)
    return cast(VendorApiKey, api_key), plaintext


def vendor_api_key_revoke(*, vendor: VendorOrganization, name: str) -> int:
    return VendorApiKey.objects.filter(vendor=vendor, name=name, revoked=False).update(revoked=True)


def device_link(*, vendor: VendorOrganization, serial: str, patient: Patient, model_name: str = "") -> Device:
    device, _ = Device.objects.update_or_create(
        vendor=vendor, serial=serial, defaults={"patient": patient, "model_name": model_name}
    )
    return device


@dataclass(frozen=True, slots=True)
class NightscoutSecrets:
    secret: str
    token: str


def nightscout_credential_rotate(*, patient: Patient) -> NightscoutSecrets:
    """A new uploader secret and token for the patient; the old ones stop working at once."""
    # Nightscout requires API_SECRET of at least 12 characters.
    secret = secrets.token_urlsafe(18)
    token = f"glucoscope-{secrets.token_hex(8)}"
    NightscoutCredential.objects.update_or_create(
        patient=patient,
        defaults={
            "secret_digest": nightscout_secret_digest(hashlib.sha1(secret.encode()).hexdigest()),
            "token_digest": nightscout_token_digest(token),
        },
    )
    return NightscoutSecrets(secret=secret, token=token)
