"""A patient's rights over their own data: export everything (JSON or CSV) and delete the account.

Export streams: each table is read with a server-side cursor in chunks and written out as it
goes, so a patient with a million readings costs a few thousand rows of memory, not a million.

Deletion removes every row about the patient in one transaction, blacklists their refresh
tokens and writes an `account_deleted` audit entry in that same transaction, so the deletion
and the record that it happened commit together. Audit entries about the patient stay: the
audit log keeps plain patient ids, not foreign keys (glucoscope/audit/models.py).
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

import orjson
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from glucoscope.audit.models import AuditAction, AuditEntry
from glucoscope.audit.services import Actor, actor_for, audit_record_now
from glucoscope.patients.models import CaregiverLink, CareTeamConsent, Device, NightscoutCredential, Patient, User

EXPORT_FORMAT = "glucoscope-export/1"
CHUNK_ROWS = 2000
ERR_PASSWORD_REQUIRED = "Your current password is required to delete your account."
ERR_PASSWORD_WRONG = "The password is not correct."


# --- Export -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Table:
    """One exported table: column names (with units) and the lookups that fill them."""

    name: str
    columns: tuple[tuple[str, str], ...]
    rows: Callable[[Patient], QuerySet[Any]]

    @property
    def headers(self) -> list[str]:
        return [header for header, _ in self.columns]

    def values(self, patient: Patient) -> Iterator[tuple[Any, ...]]:
        lookups = [lookup for _, lookup in self.columns]
        return self.rows(patient).values_list(*lookups).iterator(chunk_size=CHUNK_ROWS)


def _forecasting() -> Any:
    from forecasting import models

    return models


def _notifications() -> Any:
    from notifications import models

    return models


def _readings() -> Any:
    from glucoscope.readings import models

    return models


TABLES: tuple[Table, ...] = (
    Table("readings", (
        ("timestamp_utc", "measured_at"), ("glucose_mgdl", "value_mgdl"), ("sensor_flag", "sensor_flag"),
        ("direction", "direction"), ("trend_rate_mgdl_per_min", "trend_rate"), ("is_calibration", "is_calibration"),
        ("source", "source"), ("device_serial", "device__serial"), ("received_at_utc", "received_at"),
    ), lambda p: _readings().GlucoseReading.objects.filter(patient=p).order_by("measured_at", "pk")),
    Table("treatments", (
        ("timestamp_utc", "occurred_at"), ("kind", "kind"), ("carbs_g", "carbs_g"), ("insulin_units", "insulin_units"),
        ("basal_rate_u_per_h", "basal_rate_u_per_h"), ("duration_minutes", "duration_minutes"), ("note", "note"),
        ("event_type", "event_type"), ("entered_by", "entered_by_label"), ("source", "source"),
        ("received_at_utc", "received_at"),
    ), lambda p: _readings().Treatment.objects.filter(patient=p).order_by("occurred_at", "pk")),
    Table("nightscout_documents", (
        ("collection", "collection"), ("created_at_utc", "created_at"), ("document_json", "document"),
    ), lambda p: _readings().NightscoutDocument.objects.filter(patient=p).order_by("created_at", "pk")),
    Table("forecasts", (
        ("forecast_id", "pk"), ("origin_utc", "origin"), ("model_version", "model_version__version"),
        ("status", "status"), ("reason", "reason"), ("points_mgdl_json", "points"),
        ("personalisation_id", "personalisation_id"), ("created_at_utc", "created_at"),
    ), lambda p: _forecasting().Forecast.objects.filter(patient=p).order_by("origin", "pk")),
    # The tuned layer's 9,288 weights are not exported: they are derived from the readings above, which
    # reproduce them (`manage.py personalise_patients`), and mean nothing outside this model version.
    Table("personalisations", (
        ("personalisation_id", "pk"), ("fitted_at_utc", "fitted_at"), ("model_version", "model_version__version"),
        ("data_start_utc", "data_start"), ("data_end_utc", "data_end"), ("days_of_data", "days_of_data"),
        ("held_back_loss_population", "population_loss"), ("held_back_loss_personal", "personal_loss"),
    ), lambda p: _forecasting().PatientPersonalisation.objects.filter(patient=p).order_by("fitted_at", "pk")),
    Table("risk_assessments", (
        ("forecast_id", "forecast_id"), ("p_below_70_mgdl_30min", "below_70_30min"),
        ("p_below_70_mgdl_60min", "below_70_60min"), ("p_below_54_mgdl_30min", "below_54_30min"),
        ("p_below_54_mgdl_60min", "below_54_60min"), ("p_above_250_mgdl_60min", "above_250_60min"),
    ), lambda p: _forecasting().RiskAssessment.objects.filter(forecast__patient=p).order_by("forecast_id")),
    Table("forecast_events", (
        ("forecast_id", "forecast_id"), ("kind", "kind"), ("probability", "probability"),
        ("threshold", "threshold"), ("created_at_utc", "created_at"),
    ), lambda p: _forecasting().ForecastEvent.objects.filter(patient=p).order_by("created_at", "pk")),
    Table("glucotype_assignments", (
        ("assigned_at_utc", "assigned_at"), ("glucotype", "glucotype"), ("shares_json", "shares"),
        ("n_windows", "n_windows"),
    ), lambda p: _forecasting().GlucotypeAssignment.objects.filter(patient=p).order_by("assigned_at", "pk")),
    Table("notifications", (
        ("created_at_utc", "created_at"), ("kind", "kind"), ("status", "status"), ("title", "title"),
        ("body", "body"), ("details_json", "details"), ("recipient_role", "recipient__role"),
        ("sent_at_utc", "sent_at"), ("delivered_at_utc", "delivered_at"), ("opened_at_utc", "opened_at"),
        ("acked_at_utc", "acked_at"), ("feedback", "feedback"),
    ), lambda p: _notifications().Notification.objects.filter(patient=p).order_by("created_at", "pk")),
    Table("alert_episodes", (
        ("kind", "kind"), ("started_at_utc", "started_at"), ("last_seen_at_utc", "last_seen_at"),
        ("ended_at_utc", "ended_at"),
    ), lambda p: _notifications().AlertEpisode.objects.filter(patient=p).order_by("started_at", "pk")),
    Table("reminders", (
        ("kind", "kind"), ("label", "label"), ("local_time", "local_time"), ("weekdays_json", "weekdays"),
        ("every_n_days", "every_n_days"), ("start_date", "start_date"), ("is_active", "is_active"),
        ("created_at_utc", "created_at"), ("deleted_at_utc", "deleted_at"),
    ), lambda p: _notifications().Reminder.objects.filter(patient=p).order_by("created_at", "pk")),
    Table("notification_preferences", (
        ("quiet_start_local", "quiet_start"), ("quiet_end_local", "quiet_end"), ("disabled_kinds_json", "disabled_kinds"),
        ("low_threshold_mgdl", "low_threshold_mgdl"), ("high_threshold_mgdl", "high_threshold_mgdl"),
        ("predicted_low_probability", "predicted_low_probability"),
        ("escalate_after_minutes", "escalate_after_minutes"), ("tips_per_day", "tips_per_day"),
        ("language", "language"), ("updated_at_utc", "updated_at"),
    ), lambda p: _notifications().Preference.objects.filter(patient=p)),
    Table("devices", (
        ("serial", "serial"), ("model", "model_name"), ("vendor", "vendor__name"), ("linked_at_utc", "created_at"),
    ), lambda p: Device.objects.filter(patient=p).order_by("pk")),
    # Push registrations without the token itself: it is a delivery credential, not data about the patient.
    Table("push_devices", (
        ("platform", "platform"), ("app_version", "app_version"), ("locale", "locale"), ("is_active", "is_active"),
        ("registered_at_utc", "created_at"), ("last_seen_at_utc", "last_seen_at"),
    ), lambda p: _notifications().DeviceToken.objects.filter(user_id=p.user_id).order_by("pk")),
    Table("consents", (
        ("care_team", "care_team__name"), ("granted_at_utc", "granted_at"), ("revoked_at_utc", "revoked_at"),
    ), lambda p: CareTeamConsent.objects.filter(patient=p).order_by("granted_at", "pk")),
    Table("caregivers", (
        ("caregiver_username", "caregiver__username"), ("invited_at_utc", "created_at"), ("revoked_at_utc", "revoked_at"),
    ), lambda p: CaregiverLink.objects.filter(patient=p).order_by("created_at", "pk")),
    # Who accessed the data: the same view as GET me/access-log (no other people's addresses).
    Table("audit_entries", (
        ("at_utc", "at"), ("actor", "actor_label"), ("actor_name", "actor_name"), ("actor_role", "actor_role"),
        ("action", "action"), ("route", "route"), ("method", "method"), ("status_code", "status_code"),
    ), lambda p: AuditEntry.objects.filter(patient_id=p.pk).order_by("at", "pk")),
)


def profile_row(patient: Patient) -> dict[str, Any]:
    user = patient.user
    return {
        "patient_id": patient.pk, "username": user.username, "first_name": user.first_name, "last_name": user.last_name,
        "email": user.email, "time_zone": patient.time_zone, "diabetes_type": patient.diabetes_type,
        "birth_year": patient.birth_year, "preferred_unit": patient.preferred_unit,
        "target_low_mgdl": patient.target_low_mgdl, "target_high_mgdl": patient.target_high_mgdl,
        "created_at_utc": patient.created_at, "account_created_at_utc": user.date_joined,
    }


def _json(value: Any) -> bytes:
    return orjson.dumps(value, default=str, option=orjson.OPT_UTC_Z)


def export_json_chunks(*, patient: Patient) -> Iterator[bytes]:
    """One JSON document, written table by table and row chunk by row chunk."""
    yield b'{"format":' + _json(EXPORT_FORMAT) + b',"exported_at":' + _json(timezone.now())
    yield b',"units":' + _json({"glucose": "mg/dL", "time": "UTC (ISO 8601) unless the column says local"})
    yield b',"profile":' + _json(profile_row(patient))
    for table in TABLES:
        yield b',' + _json(table.name) + b':['
        buffer: list[bytes] = []
        first = True
        for row in table.values(patient):
            buffer.append((b"" if first else b",") + _json(dict(zip(table.headers, row, strict=True))))
            first = False
            if len(buffer) >= CHUNK_ROWS:
                yield b"".join(buffer)
                buffer.clear()
        yield b"".join(buffer) + b"]"
    yield b"}"


def _csv_cell(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


class _Drain(io.RawIOBase):
    """A write-only, non-seekable sink; zipfile then streams entries with data descriptors."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out


def _csv_lines(headers: list[str], rows: Iterable[Iterable[Any]]) -> Iterator[bytes]:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(headers)
    count = 0
    for row in rows:
        writer.writerow([_csv_cell(v) for v in row])
        count += 1
        if count % CHUNK_ROWS == 0:
            yield text.getvalue().encode()
            text.seek(0)
            text.truncate()
    yield text.getvalue().encode()


def export_csv_zip_chunks(*, patient: Patient) -> Iterator[bytes]:
    """A zip with one CSV per table (profile.csv first), streamed as it is compressed."""
    sink = _Drain()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_DEFLATED) as archive:
        files: list[tuple[str, Iterator[bytes]]] = [
            ("profile.csv", _csv_lines(list(profile_row(patient)), [profile_row(patient).values()])),
            *((f"{t.name}.csv", _csv_lines(t.headers, t.values(patient))) for t in TABLES),
        ]
        for name, lines in files:
            # force_zip64: the size is unknown up front and a large readings table may pass 2 GiB.
            with archive.open(name, mode="w", force_zip64=True) as member:
                for block in lines:
                    member.write(block)
                    if sink.chunks:
                        yield sink.take()
            yield sink.take()
    yield sink.take()


# --- Deletion ---------------------------------------------------------------------------------


class AccountDeletionError(ValueError):
    def __init__(self, field: str, message: str, *, wrong_password: bool = False) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.wrong_password = wrong_password


@dataclass(frozen=True, slots=True)
class DeletionReport:
    patient_id: int
    rows_deleted: dict[str, int]
    tokens_blacklisted: int


def _raw_delete(queryset: QuerySet[Any]) -> int:
    # One DELETE statement, without Django's cascade collector: the collector loads every row
    # of a table with SET_NULL relations into memory first (a million readings). The order of
    # the calls in account_delete respects the foreign keys instead.
    return int(queryset._raw_delete(queryset.db))


def refresh_tokens_blacklist(*, user: User) -> int:
    """Blacklist every outstanding refresh token of the user; returns how many were still live."""
    live = OutstandingToken.objects.filter(user=user).exclude(
        Exists(BlacklistedToken.objects.filter(token=OuterRef("pk")))
    )
    rows = [BlacklistedToken(token=token) for token in live]
    BlacklistedToken.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


@transaction.atomic
def account_delete(*, user: User, password: Any, request: HttpRequest | None = None) -> DeletionReport:
    """Delete a patient's account and every row about them, after re-checking their password."""
    if not isinstance(password, str) or not password:
        raise AccountDeletionError("password", ERR_PASSWORD_REQUIRED)
    if not user.check_password(password):
        raise AccountDeletionError("password", ERR_PASSWORD_WRONG, wrong_password=True)
    # Lock the patient row: an upload for this patient that races the deletion waits, then fails
    # its foreign key, instead of leaving readings behind for a patient that no longer exists.
    patient = Patient.objects.select_for_update().get(user=user)
    readings, forecasting, notifications = _readings(), _forecasting(), _notifications()
    deleted: dict[str, int] = {}
    # Children before parents; the big tables by one statement each.
    big_tables: list[tuple[str, QuerySet[Any]]] = [
        ("patient_summary", readings.PatientSummary.objects.filter(patient=patient)),
        ("outbox", readings.PatientOutbox.objects.filter(patient=patient)),
        ("forecast_events", forecasting.ForecastEvent.objects.filter(patient=patient)),
        ("risk_assessments", forecasting.RiskAssessment.objects.filter(forecast__patient=patient)),
        ("forecasts", forecasting.Forecast.objects.filter(patient=patient)),
        ("personalisations", forecasting.PatientPersonalisation.objects.filter(patient=patient)),
        ("readings", readings.GlucoseReading.objects.filter(patient=patient)),
        ("treatments", readings.Treatment.objects.filter(patient=patient)),
        ("nightscout_documents", readings.NightscoutDocument.objects.filter(patient=patient)),
    ]
    for name, queryset in big_tables:
        deleted[name] = _raw_delete(queryset)
    # Small tables through the ORM, so their own cascades (escalations, tip engagements) apply.
    small_tables: list[tuple[str, QuerySet[Any]]] = [
        ("notifications", notifications.Notification.objects.filter(patient=patient)),
        ("alert_episodes", notifications.AlertEpisode.objects.filter(patient=patient)),
        ("reminders", notifications.Reminder.objects.filter(patient=patient)),
        ("notification_preferences", notifications.Preference.objects.filter(patient=patient)),
        ("push_devices", notifications.DeviceToken.objects.filter(user=user)),
        ("glucotype_assignments", forecasting.GlucotypeAssignment.objects.filter(patient=patient)),
        ("consents", CareTeamConsent.objects.filter(patient=patient)),
        ("caregiver_links", CaregiverLink.objects.filter(patient=patient)),
        ("nightscout_credentials", NightscoutCredential.objects.filter(patient=patient)),
    ]
    for name, queryset in small_tables:
        deleted[name] = queryset.delete()[0]
    # A sensor serial identifies its wearer, so the patient's devices go too; a device whose
    # readings also belong to someone else (it was re-linked) is only unlinked, so that other
    # patient's readings keep their device.
    devices = Device.objects.filter(patient=patient)
    shared = Exists(readings.GlucoseReading.objects.filter(device=OuterRef("pk")))
    deleted["devices_unlinked"] = devices.filter(shared).update(patient=None)
    deleted["devices"] = devices.delete()[0]
    blacklisted = refresh_tokens_blacklist(user=user)
    actor = actor_for(user) or Actor(kind="user", label=user.username, user_id=user.pk, role=user.role)
    patient_id = patient.pk
    # The remaining rows (day counts, the patient row itself, sessions, admin log) go with the user.
    deleted["account"] = user.delete()[0]
    audit_record_now(request=request, actor=actor, patient_id=patient_id, action=AuditAction.ACCOUNT_DELETED,
                     status_code=204)
    return DeletionReport(patient_id=patient_id, rows_deleted=deleted, tokens_blacklisted=blacklisted)
