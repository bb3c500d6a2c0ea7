"""Who may see and write which patient's data. Deny by default: every rule is a positive grant.

- A patient reaches only their own record.
- A caregiver reaches the patients who invited them (link not revoked), read-only,
  except that they may log treatments, as parents do for their children.
- A clinician reaches the patients of their care teams who have an active consent.
- Staff use the Django admin; the patient API grants them nothing.
- Vendor keys never read; their writes are checked in `vendor_write_targets`.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Exists, OuterRef, Q, QuerySet
from rest_framework.exceptions import NotFound

from glucoscope.patients.models import (
    CaregiverLink,
    CareTeamConsent,
    CareTeamMembership,
    Device,
    Patient,
    Role,
    User,
)

ERR_PATIENT_NOT_FOUND = "Patient not found."


def patients_visible_to(*, user: User) -> QuerySet[Patient]:
    if user.role == Role.PATIENT:
        return Patient.objects.filter(user=user)
    if user.role == Role.CAREGIVER:
        links = CaregiverLink.objects.filter(patient=OuterRef("pk"), caregiver=user, revoked_at__isnull=True)
        return Patient.objects.filter(Exists(links))
    if user.role == Role.CLINICIAN:
        consents = CareTeamConsent.objects.filter(
            patient=OuterRef("pk"),
            revoked_at__isnull=True,
            care_team__in=CareTeamMembership.objects.filter(clinician=user).values("care_team"),
        )
        return Patient.objects.filter(Exists(consents))
    return Patient.objects.none()


def patients_writable_for_treatments(*, user: User) -> QuerySet[Patient]:
    # Everyone who may read may also log a treatment; caregivers and care teams log them too.
    return patients_visible_to(user=user)


def patient_get_for_user(*, user: User, patient_id: object) -> Patient:
    """The patient if the user may read them; otherwise 404, so existence does not leak."""
    try:
        pk = int(str(patient_id))
    except ValueError:
        raise NotFound(ERR_PATIENT_NOT_FOUND) from None
    patient = patients_visible_to(user=user).select_related("user").filter(pk=pk).first()
    if patient is None:
        raise NotFound(ERR_PATIENT_NOT_FOUND)
    return patient


@dataclass(frozen=True, slots=True)
class VendorLinks:
    """What one vendor may write for: its devices by serial, and the patients they are linked to."""

    device_by_serial: dict[str, tuple[int, int | None]]
    devices_by_patient: dict[int, list[int]]

    @property
    def patient_ids(self) -> set[int]:
        return set(self.devices_by_patient)


def vendor_links(*, vendor_id: int, serials: set[str], patient_ids: set[int]) -> VendorLinks:
    """Load only the devices a batch mentions, so a vendor with 100k devices costs one small query."""
    rows = Device.objects.filter(vendor_id=vendor_id).filter(
        Q(serial__in=serials) | Q(patient_id__in=patient_ids)
    ).values_list("id", "serial", "patient_id")
    device_by_serial: dict[str, tuple[int, int | None]] = {}
    devices_by_patient: dict[int, list[int]] = {}
    for device_id, serial, patient_id in rows:
        device_by_serial[serial] = (device_id, patient_id)
        if patient_id is not None:
            devices_by_patient.setdefault(patient_id, []).append(device_id)
    return VendorLinks(device_by_serial, devices_by_patient)


def patient_devices_by_serial(*, patient_id: int, serials: set[str]) -> dict[str, int]:
    return dict(Device.objects.filter(patient_id=patient_id, serial__in=serials).values_list("serial", "id"))
