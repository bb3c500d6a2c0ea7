"""People, care teams, consent, vendors, API keys and devices.

Access rules are not here but in `selectors.py`; these models only hold the facts
(who belongs to which team, who consented, which device is linked to whom).
"""

from __future__ import annotations

import zoneinfo
from typing import Any, ClassVar

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from rest_framework_api_key.models import AbstractAPIKey, APIKeyManager

MGDL_PER_MMOLL = 18.016  # GUIDE.md §5: 1 mmol/L glucose = 18.016 mg/dL


class Role(models.TextChoices):
    PATIENT = "patient", "Patient"
    CAREGIVER = "caregiver", "Caregiver / follower"
    CLINICIAN = "clinician", "Clinician"
    STAFF = "staff", "Staff"


class GlucoseUnit(models.TextChoices):
    MG_DL = "mg/dL", "mg/dL"
    MMOL_L = "mmol/L", "mmol/L"


class DiabetesType(models.TextChoices):
    TYPE_1 = "type1", "Type 1"
    TYPE_2 = "type2", "Type 2"
    GESTATIONAL = "gestational", "Gestational"
    PREDIABETES = "prediabetes", "Prediabetes"
    OTHER = "other", "Other"
    NONE = "none", "No diabetes"


class User(AbstractUser):
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.PATIENT)
    # Bumped to revoke every token issued so far: access and refresh tokens carry the generation
    # they were issued under (claim `gen`; tokens without it count as 0) and api.auth refuses
    # any other. A counter, not a timestamp, because JWT `iat` has one-second resolution and a
    # token issued in the same second as the revocation must still be refused.
    token_generation = models.PositiveIntegerField(default=0, editable=False)
    tokens_revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    _TOKEN_FIELDS = ("token_generation", "tokens_revoked_at")

    def revoke_tokens_in_memory(self) -> None:
        """Every token issued before this call stops working once the row is saved."""
        self.token_generation += 1
        self.tokens_revoked_at = timezone.now()
        self._token_fields_dirty = True

    def set_password(self, raw_password: str | None) -> None:
        # A password change or reset ends every token issued under the old password
        # (Django already ends the sessions through the session auth hash).
        super().set_password(raw_password)
        if self.pk is not None:
            self.revoke_tokens_in_memory()

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Deactivation revokes too, so reactivating an account does not revive tokens issued before.
        if self.pk is not None and not self.is_active and User.objects.filter(pk=self.pk, is_active=True).exists():
            self.revoke_tokens_in_memory()
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and getattr(self, "_token_fields_dirty", False):
            kwargs["update_fields"] = {*update_fields, *self._TOKEN_FIELDS}
        super().save(*args, **kwargs)
        self._token_fields_dirty = False


def validate_time_zone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not an IANA time zone name such as 'Europe/London'.")


class Patient(models.Model):
    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="patient")
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    diabetes_type = models.CharField(max_length=16, choices=DiabetesType.choices, default=DiabetesType.TYPE_1)
    birth_year = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1900), MaxValueValidator(2100)]
    )
    preferred_unit = models.CharField(max_length=8, choices=GlucoseUnit.choices, default=GlucoseUnit.MG_DL)
    # Personal targets in mg/dL; defaults are the consensus range (Battelino et al., Diabetes Care 2019).
    target_low_mgdl = models.PositiveSmallIntegerField(
        default=70, validators=[MinValueValidator(54), MaxValueValidator(120)]
    )
    target_high_mgdl = models.PositiveSmallIntegerField(
        default=180, validators=[MinValueValidator(120), MaxValueValidator(300)]
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(target_low_mgdl__lt=models.F("target_high_mgdl")), name="patient_targets_ordered"
            ),
        ]

    def __str__(self) -> str:
        return f"Patient {self.pk} ({self.user.username})"


class CaregiverLink(models.Model):
    """A follower (parent, partner) invited by the patient: read-only access plus treatment logging."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="caregiver_links")
    caregiver = models.ForeignKey(User, on_delete=models.CASCADE, related_name="caregiver_links")
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["patient", "caregiver"], name="caregiver_link_unique")]


class CareTeam(models.Model):
    name = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class CareTeamMembership(models.Model):
    care_team = models.ForeignKey(CareTeam, on_delete=models.CASCADE, related_name="memberships")
    clinician = models.ForeignKey(User, on_delete=models.CASCADE, related_name="care_team_memberships")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["care_team", "clinician"], name="membership_unique")]


class CareTeamConsent(models.Model):
    """A patient's revocable consent to share their data with a care team.

    Revoking sets `revoked_at` rather than deleting, so the history of who could see
    the data, and when, survives.
    """

    care_team = models.ForeignKey(CareTeam, on_delete=models.CASCADE, related_name="consents")
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="consents")
    granted_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # At most one active consent per team and patient; revoked ones stay as history.
            models.UniqueConstraint(
                fields=["care_team", "patient"], condition=Q(revoked_at__isnull=True), name="consent_one_active"
            ),
        ]


class VendorOrganization(models.Model):
    name = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class VendorApiKeyManager(APIKeyManager):
    def get_usable_keys(self) -> models.QuerySet[VendorApiKey]:
        # The vendor comes with the key: every vendor request's audit entry names it.
        return super().get_usable_keys().select_related("vendor")


class VendorApiKey(AbstractAPIKey):
    """A vendor server's key: stored hashed, shown once, prefix visible, revocable."""

    vendor = models.ForeignKey(VendorOrganization, on_delete=models.CASCADE, related_name="api_keys")
    last_used_at = models.DateTimeField(null=True, blank=True)

    objects: ClassVar[VendorApiKeyManager] = VendorApiKeyManager()  # type: ignore[assignment]

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "vendor API key"
        verbose_name_plural = "vendor API keys"


class Device(models.Model):
    """A CGM sensor or transmitter; `serial` is what vendors post as `device`."""

    vendor = models.ForeignKey(VendorOrganization, on_delete=models.PROTECT, related_name="devices", null=True)
    model_name = models.CharField(max_length=100, blank=True)
    serial = models.CharField(max_length=100)
    patient = models.ForeignKey(Patient, on_delete=models.SET_NULL, related_name="devices", null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["vendor", "serial"], name="device_serial_unique_per_vendor")]

    def __str__(self) -> str:
        return f"{self.model_name or 'CGM'} {self.serial}"


class NightscoutCredential(models.Model):
    """The credential a Nightscout uploader (xDrip+, Loop, AndroidAPS) sends.

    Uploaders send `api-secret: sha1(secret)`. We keep only sha256 of that SHA-1 hex,
    so the stored value cannot be replayed as a header, and look it up by index.

    A patient normally has one. Rotation issues a second one and gives the old one an
    `expires_at` (the grace period), so uploaders can be switched over without a gap.
    """

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="nightscout_credentials")
    secret_digest = models.CharField(max_length=64, unique=True)
    token_digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Null: valid until rotated. Set: refused from this instant on.
    expires_at = models.DateTimeField(null=True, blank=True)

    def is_valid_at(self, moment: Any) -> bool:
        return self.expires_at is None or moment < self.expires_at
