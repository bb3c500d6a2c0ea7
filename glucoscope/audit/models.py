"""The audit log of access to protected health information (HIPAA §164.312(b)).

One row per patient per request that read or changed that patient's data. Rows are
append-only for the application: the model and queryset refuse updates and deletes, and on
PostgreSQL a trigger (migration 0002) refuses UPDATE, DELETE and TRUNCATE as well.

Patients and actors are plain integers, not foreign keys, so the log outlives the accounts it
mentions: deleting an account must not delete the record that it was accessed, or deleted.
"""

from __future__ import annotations

from typing import Any, NoReturn

from django.db import models

ERR_APPEND_ONLY = "The audit log is append-only: entries cannot be changed or deleted."


class AppendOnlyError(RuntimeError):
    pass


class AuditAction(models.TextChoices):
    READ = "read", "Read"
    CREATE = "create", "Create"
    UPDATE = "update", "Update"
    DELETE = "delete", "Delete"
    EXPORT = "export", "Export"
    ACCOUNT_DELETED = "account_deleted", "Account deleted"


class ActorKind(models.TextChoices):
    USER = "user", "Person"
    VENDOR = "vendor", "Vendor API key"
    NIGHTSCOUT = "nightscout", "Nightscout uploader"
    SYSTEM = "system", "System"


class AuditEntryQuerySet(models.QuerySet["AuditEntry"]):
    def update(self, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError(ERR_APPEND_ONLY)

    def delete(self) -> NoReturn:  # type: ignore[override]
        raise AppendOnlyError(ERR_APPEND_ONLY)

    def bulk_update(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError(ERR_APPEND_ONLY)

    def update_or_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError(ERR_APPEND_ONLY)


class AuditEntry(models.Model):
    at = models.DateTimeField(db_index=True)
    actor_kind = models.CharField(max_length=16, choices=ActorKind.choices)
    # The person's user id (not a foreign key, so it survives the account); null for machines.
    actor_user_id = models.BigIntegerField(null=True, blank=True)
    # Snapshots taken at the time: username or a machine label ("vendor:Acme", "nightscout:patient 7").
    actor_label = models.CharField(max_length=200)
    actor_name = models.CharField(max_length=300, blank=True)
    actor_role = models.CharField(max_length=16, blank=True)
    patient_id = models.BigIntegerField()
    action = models.CharField(max_length=24, choices=AuditAction.choices)
    route = models.CharField(max_length=120, blank=True)
    method = models.CharField(max_length=8, blank=True)
    # The path only: query strings can carry credentials (Nightscout's ?token=), so they are never kept.
    path = models.CharField(max_length=500, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        verbose_name = "audit entry"
        verbose_name_plural = "audit entries"
        indexes = [
            models.Index(fields=["patient_id", "-at", "-id"], name="audit_patient_at"),
            models.Index(fields=["actor_user_id", "-at"], name="audit_actor_at"),
        ]
        # Staff read the log in the admin; nobody adds, changes or deletes entries there.
        default_permissions = ("view",)

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action} patient {self.patient_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError(ERR_APPEND_ONLY)
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError(ERR_APPEND_ONLY)
