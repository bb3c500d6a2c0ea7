"""Writes for people, teams, consent, vendors and credentials. Secrets are returned once and stored hashed."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken

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


def nightscout_credential_rotate(*, patient: Patient, grace: timedelta = timedelta(0)) -> NightscoutSecrets:
    """A new uploader secret and token for the patient.

    The patient's current credentials keep working for `grace` (zero: they stop at once), so the
    uploaders can be switched to the new secret one by one without a gap in readings.
    """
    if grace < timedelta(0):
        raise ValueError("grace must not be negative")
    # Nightscout requires API_SECRET of at least 12 characters.
    secret = secrets.token_urlsafe(18)
    token = f"glucoscope-{secrets.token_hex(8)}"
    now = timezone.now()
    ends = now + grace
    with transaction.atomic():
        # Lock the patient's credentials so two rotations at once cannot both leave theirs open-ended.
        current = NightscoutCredential.objects.select_for_update().filter(patient=patient)
        current.filter(expires_at__lte=now).delete()
        current.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=ends)).update(expires_at=ends)
        NightscoutCredential.objects.create(
            patient=patient,
            secret_digest=nightscout_secret_digest(hashlib.sha1(secret.encode()).hexdigest()),
            token_digest=nightscout_token_digest(token),
        )
    return NightscoutSecrets(secret=secret, token=token)


def vendor_api_key_rotate(*, vendor: VendorOrganization, grace: timedelta) -> tuple[VendorApiKey, str]:
    """A new key for the vendor; its other usable keys expire after `grace`, so both work meanwhile.

    Returns the new key object and its plaintext, shown this once.
    """
    if grace < timedelta(0):
        raise ValueError("grace must not be negative")
    now = timezone.now()
    ends = now + grace
    with transaction.atomic():
        old = VendorApiKey.objects.select_for_update().filter(vendor=vendor, revoked=False)
        old.filter(Q(expiry_date__isnull=True) | Q(expiry_date__gt=ends)).update(expiry_date=ends)
        return vendor_api_key_create(vendor=vendor, name=f"rotated {now:%Y-%m-%d %H:%M:%S} UTC")


# --- Token revocation (people's Bearer tokens) ------------------------------------------------

def refresh_token_revoke(*, user: User, refresh: str) -> None:
    """Blacklist one refresh token of this user (logout). Raises TokenError if it is not valid or not theirs."""
    token = RefreshToken(refresh)  # type: ignore[arg-type]  # verifies signature, expiry, blacklist (stubs omit str)
    if str(token.payload.get(jwt_settings.USER_ID_CLAIM)) != str(user.pk):
        raise TokenError("Token is not valid for this account.")
    token.blacklist()


@transaction.atomic
def user_tokens_revoke_all(*, user: User) -> int:
    """Every token of the user stops working now: access tokens by generation, refresh tokens also blacklisted.

    Returns how many outstanding refresh tokens were blacklisted.
    """
    User.objects.select_for_update().filter(pk=user.pk).first()
    user.refresh_from_db(fields=["token_generation"])
    user.revoke_tokens_in_memory()
    user.save(update_fields=["token_generation", "tokens_revoked_at"])
    outstanding = OutstandingToken.objects.filter(user=user, expires_at__gt=timezone.now()).exclude(
        blacklistedtoken__isnull=False
    )
    blacklisted = BlacklistedToken.objects.bulk_create(
        [BlacklistedToken(token=t) for t in outstanding], ignore_conflicts=True
    )
    return len(blacklisted)


# --- Second factor (TOTP) for clinicians and staff ----------------------------------------------

ERR_ALREADY_ENROLLED = "This account already has a confirmed authenticator; an operator can replace it (otp_enrol --replace)."


class TotpEnrolmentError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class TotpEnrolment:
    device: TOTPDevice
    secret_base32: str
    otpauth_uri: str


def _enrolment(device: TOTPDevice) -> TotpEnrolment:
    return TotpEnrolment(device=device, secret_base32=base64.b32encode(device.bin_key).decode().rstrip("="),
                         otpauth_uri=device.config_url)


@transaction.atomic
def totp_enrolment_start(*, user: User) -> TotpEnrolment:
    """The user's pending (unconfirmed) authenticator, created if needed, to be confirmed with a code.

    Refused once a confirmed one exists: replacing an authenticator is an operator's job
    (`otp_enrol --replace`), so a stolen password cannot swap in the thief's phone.
    """
    User.objects.select_for_update().filter(pk=user.pk).first()
    if TOTPDevice.objects.filter(user=user, confirmed=True).exists():
        raise TotpEnrolmentError(ERR_ALREADY_ENROLLED)
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("pk").first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="authenticator", confirmed=False)
    return _enrolment(device)


def totp_enrolment_confirm(*, device: TOTPDevice, code: str) -> bool:
    """Confirms the pending authenticator if `code` is its current code (proving the app holds the secret)."""
    if device.confirmed or not device.verify_token(code.strip()):
        return False
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    return True


@transaction.atomic
def totp_enrol_by_operator(*, user: User, replace: bool = False) -> TotpEnrolment:
    """A confirmed authenticator issued by an operator (`manage.py otp_enrol`); `replace` drops the old ones."""
    User.objects.select_for_update().filter(pk=user.pk).first()
    existing = TOTPDevice.objects.filter(user=user)
    if existing.filter(confirmed=True).exists() and not replace:
        raise TotpEnrolmentError(ERR_ALREADY_ENROLLED)
    existing.delete()
    return _enrolment(TOTPDevice.objects.create(user=user, name="authenticator", confirmed=True))
