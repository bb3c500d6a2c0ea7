"""Property-level authorization (OWASP API3:2023): what each role gets back, and what nobody can set.

- SNAPSHOT pins the exact set of keys (as paths, `results[].id`) every role receives from every
  JSON GET endpoint. A new key is a possible leak: the test fails until someone looks and adds it.
- No response to anyone, on any route, carries a secret: password hashes, API keys or their
  digests, Nightscout secrets or digests, push tokens, or the other patient's identity.
- No writable endpoint lets a caller set the owner, patient, author or role of what it writes.
"""

from __future__ import annotations

import json
import os
from datetime import time, timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from glucoscope.patients.models import CaregiverLink, CareTeamConsent, NightscoutCredential, Role, User, VendorApiKey
from glucoscope.readings.models import GlucoseReading, Treatment
from notifications.models import DeviceToken, Notification, Preference, Reminder
from tests.api.test_access_matrix import EXPECTED, request_body
from tests.conftest import World
from tests.security.seed_data import seed_patient_data
from tests.security.test_audit import _call, _route_kwargs

# Not JSON documents (schema, docs, metrics text, CSV), so there are no keys to pin.
NOT_JSON = {"schema", "api-docs", "metrics", "v1:patient-export"}
ALICE_SIDE = {"patient", "caregiver", "clinician", "vendor", "nightscout"}
TOKEN_ROUTES = {"v1:token", "v1:token-refresh"}
BOB_SIDE = {"other_patient", "other_clinician"}


def key_paths(data: Any, prefix: str = "") -> set[str]:
    """Every key path in a JSON document; list items are merged under `[]`."""
    paths: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            paths.add(path)
            paths |= key_paths(value, path)
    elif isinstance(data, list):
        for item in data:
            paths |= key_paths(item, f"{prefix}[]")
    return paths


def _secrets(world: World) -> dict[str, str]:
    secrets = {f"password hash of {u.username}": u.password for u in User.objects.all()}
    secrets |= {"vendor key": world.vendor_key, "other vendor key": world.other_vendor_key,
                "alice nightscout secret": world.alice_ns_secret, "bob nightscout secret": world.bob_ns_secret}
    for key in VendorApiKey.objects.all():
        secrets[f"api key id/hash {key.prefix}"] = key.pk.split(".", 1)[-1]
    for credential in NightscoutCredential.objects.all():
        secrets[f"ns secret digest {credential.pk}"] = credential.secret_digest
        secrets[f"ns token digest {credential.pk}"] = credential.token_digest
    for token in DeviceToken.objects.all():
        secrets[f"push token {token.pk}"] = token.token
    return secrets


def _nested(parent: str, keys: list[str]) -> list[str]:
    """The paths of `keys` inside `parent` (`results[]` for the items of a list)."""
    return [f"{parent}.{key}" for key in keys]


# Nightscout's entries routes (all, current, sgv) answer a list of the same entry documents.
_NS_ENTRY_KEYS = [
    "_id", "date", "dateString", "delta", "device", "direction", "mills", "sgv", "sysTime", "trend", "type",
    "utcOffset",
]

# The patient's own data export (alice has caregivers; bob has none, so his export lacks their fields).
_EXPORT_KEYS = [
    "alert_episodes", "alert_episodes[].ended_at_utc", "alert_episodes[].kind", "alert_episodes[].last_seen_at_utc",
    "alert_episodes[].started_at_utc", "audit_entries", "audit_entries[].action", "audit_entries[].actor",
    "audit_entries[].actor_name", "audit_entries[].actor_role", "audit_entries[].at_utc", "audit_entries[].method",
    "audit_entries[].route", "audit_entries[].status_code", "caregivers", "caregivers[].caregiver_username",
    "caregivers[].invited_at_utc", "caregivers[].revoked_at_utc", "consents", "consents[].care_team",
    "consents[].granted_at_utc", "consents[].revoked_at_utc", "devices", "devices[].linked_at_utc",
    "devices[].model", "devices[].serial", "devices[].vendor", "exported_at", "forecast_events",
    "forecast_events[].created_at_utc", "forecast_events[].forecast_id", "forecast_events[].kind",
    "forecast_events[].probability", "forecast_events[].threshold", "forecasts", "forecasts[].created_at_utc",
    "forecasts[].forecast_id", "forecasts[].model_version", "forecasts[].origin_utc",
    "forecasts[].personalisation_id", "forecasts[].points_mgdl_json",
    "forecasts[].points_mgdl_json[].minutes_ahead", "forecasts[].points_mgdl_json[].p10",
    "forecasts[].points_mgdl_json[].p50", "forecasts[].points_mgdl_json[].p90", "forecasts[].reason",
    "forecasts[].status", "format", "glucotype_assignments", "glucotype_assignments[].assigned_at_utc",
    "glucotype_assignments[].glucotype", "glucotype_assignments[].n_windows", "glucotype_assignments[].shares_json",
    "glucotype_assignments[].shares_json.low", "glucotype_assignments[].shares_json.moderate",
    "glucotype_assignments[].shares_json.severe", "nightscout_documents", "nightscout_documents[].collection",
    "nightscout_documents[].created_at_utc", "nightscout_documents[].document_json",
    "nightscout_documents[].document_json.device", "notification_preferences",
    "notification_preferences[].disabled_kinds_json", "notification_preferences[].escalate_after_minutes",
    "notification_preferences[].high_threshold_mgdl", "notification_preferences[].language",
    "notification_preferences[].low_threshold_mgdl", "notification_preferences[].predicted_low_probability",
    "notification_preferences[].quiet_end_local", "notification_preferences[].quiet_start_local",
    "notification_preferences[].tips_per_day", "notification_preferences[].updated_at_utc", "notifications",
    "notifications[].acked_at_utc", "notifications[].body", "notifications[].created_at_utc",
    "notifications[].delivered_at_utc", "notifications[].details_json", "notifications[].feedback",
    "notifications[].kind", "notifications[].opened_at_utc", "notifications[].recipient_role",
    "notifications[].sent_at_utc", "notifications[].status", "notifications[].title", "personalisations",
    "personalisations[].data_end_utc", "personalisations[].data_start_utc", "personalisations[].days_of_data",
    "personalisations[].fitted_at_utc", "personalisations[].held_back_loss_personal",
    "personalisations[].held_back_loss_population", "personalisations[].model_version",
    "personalisations[].personalisation_id", "profile",
    "profile.account_created_at_utc", "profile.birth_year", "profile.created_at_utc", "profile.diabetes_type",
    "profile.email", "profile.first_name", "profile.last_name", "profile.patient_id", "profile.preferred_unit",
    "profile.target_high_mgdl", "profile.target_low_mgdl", "profile.time_zone", "profile.username", "push_devices",
    "push_devices[].app_version", "push_devices[].is_active", "push_devices[].last_seen_at_utc",
    "push_devices[].locale", "push_devices[].platform", "push_devices[].registered_at_utc", "readings",
    "readings[].device_serial", "readings[].direction", "readings[].glucose_mgdl", "readings[].is_calibration",
    "readings[].received_at_utc", "readings[].sensor_flag", "readings[].source", "readings[].timestamp_utc",
    "readings[].trend_rate_mgdl_per_min", "reminders", "reminders[].created_at_utc", "reminders[].deleted_at_utc",
    "reminders[].every_n_days", "reminders[].is_active", "reminders[].kind", "reminders[].label",
    "reminders[].local_time", "reminders[].start_date", "reminders[].weekdays_json", "risk_assessments",
    "risk_assessments[].forecast_id", "risk_assessments[].p_above_250_mgdl_60min",
    "risk_assessments[].p_below_54_mgdl_30min", "risk_assessments[].p_below_54_mgdl_60min",
    "risk_assessments[].p_below_70_mgdl_30min", "risk_assessments[].p_below_70_mgdl_60min", "treatments",
    "treatments[].basal_rate_u_per_h", "treatments[].carbs_g", "treatments[].duration_minutes",
    "treatments[].entered_by", "treatments[].event_type", "treatments[].insulin_units", "treatments[].kind",
    "treatments[].note", "treatments[].received_at_utc", "treatments[].source", "treatments[].timestamp_utc",
    "units", "units.glucose", "units.time",
]

# Notification preferences: the same document on /me and on /patients/{id}.
_NOTIFICATION_PREFERENCE_KEYS = [
    "bounds", "bounds.high_threshold_mgdl", "bounds.low_threshold_mgdl", "disabled_kinds", "escalate_after_minutes",
    "followers", "high_threshold_mgdl", "language", "low_threshold_mgdl", "predicted_low_probability", "quiet_end",
    "quiet_start", "time_zone", "tips_per_day",
]

# A page of notifications: the same on /me and on /patients/{id}.
_NOTIFICATION_PAGE_KEYS = [
    "count", "next", "previous", "results", "results[].acked_at", "results[].body", "results[].created_at",
    "results[].delivered_at", "results[].details", "results[].escalated_at", "results[].feedback", "results[].id",
    "results[].kind", "results[].opened_at", "results[].parent", "results[].patient", "results[].reason",
    "results[].recipient", "results[].sent_at", "results[].status", "results[].title",
]

# One forecast: the latest one, and each item of the forecast history.
_FORECAST_KEYS = [
    "disclaimer", "model_version", "origin", "personalised", "points", "points[].minutes_ahead", "points[].p10", "points[].p90",
    "points[].value", "reason", "risk", "risk.above_250_60min", "risk.below_54_30min", "risk.below_54_60min",
    "risk.below_70_30min", "risk.below_70_60min", "status", "unit",
]

# One period of the risk indicators: the current one, and each item of the trend.
_RISK_PERIOD_KEYS = [
    "disclaimer", "end", "gri", "gri.citation", "gri.gri", "gri.note", "gri.zone", "hba1c_estimate_gmi",
    "hba1c_estimate_gmi.citation", "hba1c_estimate_gmi.gmi_percent", "hba1c_estimate_gmi.is_estimate",
    "hba1c_estimate_gmi.note", "is_estimate", "microalbuminuria_beck_2019",
    "microalbuminuria_beck_2019.adjusted_for_hba1c", "microalbuminuria_beck_2019.ci95",
    "microalbuminuria_beck_2019.ci95_per_10_points", "microalbuminuria_beck_2019.citation",
    "microalbuminuria_beck_2019.hazard_ratio", "microalbuminuria_beck_2019.hr_per_10_points_lower_tir",
    "microalbuminuria_beck_2019.is_estimate", "microalbuminuria_beck_2019.outcome",
    "microalbuminuria_beck_2019.reference_tir_percent", "microalbuminuria_beck_2019.tir_percent", "n_readings",
    "retinopathy_progression_beck_2019", "retinopathy_progression_beck_2019.adjusted_for_hba1c",
    "retinopathy_progression_beck_2019.ci95", "retinopathy_progression_beck_2019.ci95_per_10_points",
    "retinopathy_progression_beck_2019.citation", "retinopathy_progression_beck_2019.hazard_ratio",
    "retinopathy_progression_beck_2019.hr_per_10_points_lower_tir", "retinopathy_progression_beck_2019.is_estimate",
    "retinopathy_progression_beck_2019.outcome", "retinopathy_progression_beck_2019.reference_tir_percent",
    "retinopathy_progression_beck_2019.tir_percent", "retinopathy_progression_hba1c_adjusted_lachin_2022",
    "retinopathy_progression_hba1c_adjusted_lachin_2022.adjusted_for_hba1c",
    "retinopathy_progression_hba1c_adjusted_lachin_2022.ci95",
    "retinopathy_progression_hba1c_adjusted_lachin_2022.ci95_per_10_points",
    "retinopathy_progression_hba1c_adjusted_lachin_2022.citation",
    "retinopathy_progression_hba1c_adjusted_lachin_2022.hazard_ratio",
    "retinopathy_progression_hba1c_adjusted_lachin_2022.hr_per_10_points_lower_tir",
    "retinopathy_progression_hba1c_adjusted_lachin_2022.is_estimate",
    "retinopathy_progression_hba1c_adjusted_lachin_2022.outcome",
    "retinopathy_progression_hba1c_adjusted_lachin_2022.reference_tir_percent",
    "retinopathy_progression_hba1c_adjusted_lachin_2022.tir_percent", "start", "sufficient_data",
    "time_in_range_70_180",
]

# Route → comma-joined roles → the key paths they receive (seed_patient_data for alice and bob).
# Key sets that several routes or roles share are named once above (each list kept sorted, as observed).
SNAPSHOT: dict[str, dict[str, list[str]]] = {
    "healthz": {
        "anonymous,patient,other_patient,caregiver,clinician,other_clinician,revoked_clinician,staff,vendor,other_vendor,nightscout": [
            "status",
        ],
    },
    "nightscout:ns-devicestatus": {
        "nightscout": [
            "[]._id", "[].device",
        ],
    },
    "nightscout:ns-entries": {
        "nightscout": _nested("[]", _NS_ENTRY_KEYS),
    },
    "nightscout:ns-entries-current": {
        "nightscout": _nested("[]", _NS_ENTRY_KEYS),
    },
    "nightscout:ns-entries-sgv": {
        "nightscout": _nested("[]", _NS_ENTRY_KEYS),
    },
    "nightscout:ns-experiments-test": {
        "nightscout": [
            "status",
        ],
    },
    "nightscout:ns-profile": {
        "nightscout": [],
    },
    "nightscout:ns-status": {
        "anonymous,patient,other_patient,caregiver,clinician,other_clinician,revoked_clinician,staff,vendor,other_vendor": [
            "apiEnabled", "authorized", "careportalEnabled", "name", "serverTime", "serverTimeEpoch", "settings",
            "settings.enable", "settings.units", "status", "version",
        ],
        "nightscout": [
            "apiEnabled", "authorized", "authorized.canRead", "authorized.canWrite", "careportalEnabled", "name",
            "serverTime", "serverTimeEpoch", "settings", "settings.enable", "settings.units", "status", "version",
        ],
    },
    "nightscout:ns-treatments": {
        "nightscout": [
            "[]._id", "[].carbs", "[].created_at", "[].enteredBy", "[].eventType", "[].notes", "[].timestamp",
        ],
    },
    "nightscout:ns-verifyauth": {
        "anonymous,patient,other_patient,caregiver,clinician,other_clinician,revoked_clinician,staff,vendor,other_vendor,nightscout": [
            "message", "message.canRead", "message.canWrite", "message.isAdmin", "message.message",
            "message.permissions", "message.rolefound", "status",
        ],
    },
    "readyz": {
        "anonymous,patient,other_patient,caregiver,clinician,other_clinician,revoked_clinician,staff,vendor,other_vendor,nightscout": [
            "checks", "checks.database", "checks.model", "checks.redis", "status",
        ],
    },
    "v1:me": {
        "caregiver,revoked_clinician,staff,clinician,other_clinician": [
            "email", "id", "name", "patient", "role", "username",
        ],
        "patient,other_patient": [
            "email", "id", "name", "patient", "patient.birth_year", "patient.diabetes_type", "patient.id",
            "patient.name", "patient.preferred_unit", "patient.target_high_mgdl", "patient.target_low_mgdl",
            "patient.time_zone", "patient.username", "role", "username",
        ],
    },
    "v1:my-access-log": {
        "patient,other_patient": [
            "end", "next", "previous", "results", "start",
        ],
    },
    "v1:my-caregivers": {
        "patient": [
            "results", "results[].caregiver", "results[].invited_at", "results[].revoked_at", "results[].username",
        ],
        "other_patient": [
            "results",
        ],
    },
    "v1:my-consents": {
        "patient,other_patient": [
            "results", "results[].care_team", "results[].care_team_name", "results[].granted_at",
            "results[].revoked_at",
        ],
    },
    "v1:my-export": {
        "patient": _EXPORT_KEYS,
        "other_patient": [key for key in _EXPORT_KEYS if not key.startswith("caregivers[].")],
    },
    "v1:my-notification-preferences": {
        "patient,other_patient": _NOTIFICATION_PREFERENCE_KEYS,
    },
    "v1:my-notifications": {
        "caregiver,revoked_clinician,staff,clinician,other_clinician": [
            "count", "next", "previous", "results",
        ],
        "patient,other_patient": _NOTIFICATION_PAGE_KEYS,
    },
    "v1:patient-agp": {
        "caregiver,patient,clinician": [
            "bin_minutes", "citation", "daily_profiles", "daily_profiles[].date", "daily_profiles[].values", "end",
            "n_readings", "percentiles", "percentiles[].minute_of_day", "percentiles[].n_readings",
            "percentiles[].p25", "percentiles[].p5", "percentiles[].p50", "percentiles[].p75", "percentiles[].p95",
            "percentiles[].time", "start", "target_range", "time_zone", "unit",
        ],
    },
    "v1:patient-fhir-cgm-summary": {
        "caregiver,patient,clinician": [
            "entry", "entry[].fullUrl", "entry[].resource", "entry[].resource.category",
            "entry[].resource.category[].coding", "entry[].resource.category[].coding[].code",
            "entry[].resource.category[].coding[].system", "entry[].resource.code", "entry[].resource.code.coding",
            "entry[].resource.code.coding[].code", "entry[].resource.code.coding[].display",
            "entry[].resource.code.coding[].system", "entry[].resource.component",
            "entry[].resource.component[].code", "entry[].resource.component[].code.coding",
            "entry[].resource.component[].code.coding[].code", "entry[].resource.component[].code.coding[].display",
            "entry[].resource.component[].code.coding[].system", "entry[].resource.component[].valueQuantity",
            "entry[].resource.component[].valueQuantity.code", "entry[].resource.component[].valueQuantity.system",
            "entry[].resource.component[].valueQuantity.unit", "entry[].resource.component[].valueQuantity.value",
            "entry[].resource.effectivePeriod", "entry[].resource.effectivePeriod.end",
            "entry[].resource.effectivePeriod.start", "entry[].resource.hasMember",
            "entry[].resource.hasMember[].reference", "entry[].resource.meta", "entry[].resource.meta.profile",
            "entry[].resource.note", "entry[].resource.note[].text", "entry[].resource.resourceType",
            "entry[].resource.status", "entry[].resource.subject", "entry[].resource.subject.reference",
            "entry[].resource.valueQuantity", "entry[].resource.valueQuantity.code",
            "entry[].resource.valueQuantity.system", "entry[].resource.valueQuantity.unit",
            "entry[].resource.valueQuantity.value", "id", "resourceType", "timestamp", "type",
        ],
    },
    "v1:patient-forecast": {
        "caregiver,patient,clinician": _FORECAST_KEYS,
    },
    "v1:patient-forecasts": {
        "caregiver,patient,clinician": sorted(["next", "previous", "results", *_nested("results[]", _FORECAST_KEYS)]),
    },
    "v1:patient-metrics": {
        "caregiver,patient,clinician": [
            "cv", "days_of_data", "end", "gmi", "gri", "gri_zone", "hbgi", "lbgi", "mage", "mean_glucose",
            "percent_active", "sd", "start", "sufficient_data", "time_above_180", "time_above_250", "time_below_54",
            "time_below_70", "time_in_range_70_180", "time_in_tight_range_70_140",
        ],
    },
    "v1:patient-notification-preferences": {
        "caregiver,patient,clinician": _NOTIFICATION_PREFERENCE_KEYS,
    },
    "v1:patient-notifications": {
        "caregiver,patient,clinician": _NOTIFICATION_PAGE_KEYS,
    },
    "v1:patient-readings": {
        "caregiver,patient,clinician": [
            "end", "next", "previous", "results", "results[].device_id", "results[].id", "results[].is_calibration",
            "results[].sensor_flag", "results[].source", "results[].timestamp", "results[].trend",
            "results[].trend_rate", "results[].unit", "results[].value", "start", "unit",
        ],
    },
    "v1:patient-reminders": {
        "caregiver,patient,clinician": [
            "results", "results[].created_by", "results[].deleted_at", "results[].every_n_days", "results[].id",
            "results[].is_active", "results[].kind", "results[].label", "results[].local_time",
            "results[].next_fire_at", "results[].patient", "results[].start_date", "results[].weekdays",
        ],
    },
    "v1:patient-risk-indicators": {
        "caregiver,patient,clinician": sorted([
            "citations", "current", "disclaimer", "period_days", "trend",
            *_nested("current", _RISK_PERIOD_KEYS), *_nested("trend[]", _RISK_PERIOD_KEYS),
        ]),
    },
    "v1:patient-summary": {
        "caregiver,patient,clinician": [
            "computed_at", "latest", "latest.device_id", "latest.id", "latest.is_calibration", "latest.sensor_flag",
            "latest.source", "latest.timestamp", "latest.trend", "latest.trend_rate", "latest.unit", "latest.value",
            "latest_age_seconds", "patient", "readings_last_24h", "trend", "unit",
        ],
    },
    "v1:patient-treatments": {
        "caregiver,patient,clinician": [
            "next", "previous", "results", "results[].basal_rate_u_per_h", "results[].carbs_g",
            "results[].duration_minutes", "results[].entered_by", "results[].event_type", "results[].id",
            "results[].insulin_units", "results[].kind", "results[].note", "results[].source", "results[].timestamp",
        ],
    },
    "v1:patients": {
        "caregiver,patient,clinician,other_patient,other_clinician": [
            "count", "next", "previous", "results", "results[].birth_year", "results[].diabetes_type", "results[].id",
            "results[].name", "results[].preferred_unit", "results[].target_high_mgdl", "results[].target_low_mgdl",
            "results[].time_zone", "results[].username",
        ],
        "revoked_clinician,staff": [
            "count", "next", "previous", "results",
        ],
    },
}
_observed: dict[str, dict[str, list[str]]] = {}


@pytest.mark.django_db
@pytest.mark.parametrize("route", sorted(EXPECTED), ids=lambda r: f"{r[1].upper()} {r[0]}")
def test_responses_hold_no_secret_and_only_the_snapshot_keys(world: World, route: tuple[str, str]) -> None:
    name, method = route
    seed_patient_data(world.alice, readings=3, tag="alice")
    seed_patient_data(world.bob, readings=3, tag="bob")
    team_id = world.alice.consents.filter(revoked_at__isnull=True).get().care_team_id
    secrets = _secrets(world)
    leaks, keys_by_role = [], {}
    url = reverse(name, kwargs=_route_kwargs(name, world))
    for role in EXPECTED[route]:
        response = _call(world.client(role), method, url, request_body(name, world, team_id))
        body = b"".join(response.streaming_content) if response.streaming else response.content
        text = body.decode(errors="replace")
        leaks += [f"{role}: {label}" for label, secret in secrets.items() if secret and secret in text]
        # The other patient's identity (skipped for freshly signed tokens: base64 could spell a name by chance).
        if name not in TOKEN_ROUTES and role in ALICE_SIDE and "bob" in text:
            leaks.append(f"{role}: bob's data in a response about alice")
        if name not in TOKEN_ROUTES and role in BOB_SIDE and "alice" in text:
            leaks.append(f"{role}: alice's data in a response about bob")
        if method == "get" and name not in NOT_JSON and 200 <= response.status_code < 300:
            keys_by_role[role] = sorted(key_paths(json.loads(body)))
    assert not leaks, leaks
    if method != "get" or name in NOT_JSON:
        return
    _observed[name] = keys_by_role
    if os.environ.get("GLUCOSCOPE_SNAPSHOT_PRINT"):
        with open(os.environ["GLUCOSCOPE_SNAPSHOT_PRINT"], "a") as out:
            out.write(json.dumps({name: keys_by_role}) + "\n")
    expected = {role: keys for group, keys in SNAPSHOT.get(name, {}).items() for role in group.split(",")}
    assert keys_by_role == expected, (
        f"{name}: response keys changed; check no new key leaks data, then update SNAPSHOT.\n"
        + "\n".join(f"{role}: +{sorted(set(keys) - set(expected.get(role, [])))} "
                    f"-{sorted(set(expected.get(role, [])) - set(keys))}" for role, keys in keys_by_role.items())
    )


# --- Mass assignment --------------------------------------------------------------------------

HOSTILE = {"owner": None, "user": None, "user_id": None, "patient_id": None, "recipient": None, "created_by": None,
           "author": None, "role": Role.STAFF, "is_staff": True, "is_superuser": True, "id": 999_999}


def hostile(world: World, body: dict[str, Any]) -> dict[str, Any]:
    """The body with every ownership and role field a client might try, pointing at bob."""
    fields = {**HOSTILE, "owner": world.bob.user.pk, "user": world.bob.user.pk, "user_id": world.bob.user.pk,
              "patient_id": world.bob.pk, "recipient": world.bob.user.pk, "created_by": world.bob.user.pk,
              "author": world.bob.user.pk}
    return {**fields, "patient": world.bob.pk, **body} if "patient" not in body else {**fields, **body}


def refused_or_ignored(response: Any, ok_status: int) -> None:
    """Either the extra fields are ignored (success), or refused with a 400 that names them."""
    if response.status_code == ok_status:
        return
    assert response.status_code == 400, (response.status_code, response.content)
    assert set(response.json()) <= set(HOSTILE) | {"patient"}, response.json()


def _roles_unchanged(world: World) -> None:
    for user in User.objects.all():
        assert not user.is_superuser, user.username
        assert user.is_staff == (user.username == "sam"), user.username
    assert User.objects.get(pk=world.alice.user.pk).role == Role.PATIENT


@pytest.mark.django_db
def test_no_mass_assignment_of_owner_patient_or_role(world: World) -> None:
    patient, clinician = world.client("patient"), world.client("clinician")
    team_id = world.alice.consents.filter(revoked_at__isnull=True).get().care_team_id
    bob_before = (CareTeamConsent.objects.filter(patient=world.bob).count(), CaregiverLink.objects.filter(patient=world.bob).count(),
                  Reminder.objects.filter(patient=world.bob).count(), Notification.objects.filter(patient=world.bob).count(),
                  GlucoseReading.objects.filter(patient=world.bob).count(), Treatment.objects.filter(patient=world.bob).count())

    refused_or_ignored(patient.post("/api/v1/me/consents", hostile(world, {"care_team": team_id}), format="json"), 201)
    refused_or_ignored(patient.post("/api/v1/me/caregivers", hostile(world, {"username": "carol"}), format="json"), 201)
    response = patient.post("/api/v1/me/devices", hostile(world, {"token": "tok-mass-1", "platform": "android"}), format="json")
    refused_or_ignored(response, 201)
    assert set(DeviceToken.objects.filter(token="tok-mass-1").values_list("user_id", flat=True)) <= {world.alice.user.pk}
    response = patient.patch("/api/v1/me/notification-preferences", hostile(world, {"tips_per_day": 2}), format="json")
    refused_or_ignored(response, 200)
    assert not Preference.objects.filter(patient=world.bob, tips_per_day=2).exists()
    reminders = f"/api/v1/patients/{world.alice.pk}/reminders"
    response = patient.post(reminders, hostile(world, {"kind": "glucose_check", "local_time": "08:00"}), format="json")
    refused_or_ignored(response, 201)
    reminder = Reminder.objects.get(pk=response.json()["id"]) if response.status_code == 201 else Reminder.objects.create(
        patient=world.alice, kind="glucose_check", local_time=time(8), start_date=timezone.now().date(),
        next_fire_at=timezone.now() + timedelta(days=1), created_by=world.alice.user)
    refused_or_ignored(patient.patch(f"{reminders}/{reminder.pk}", hostile(world, {"label": "x"}), format="json"), 200)
    reminder.refresh_from_db()
    assert (reminder.patient_id, reminder.created_by_id) == (world.alice.pk, world.alice.user.pk)
    assert not Reminder.objects.filter(patient=world.bob).exists()
    response = clinician.post(f"/api/v1/patients/{world.alice.pk}/messages", hostile(world, {"text": "Hello"}), format="json")
    refused_or_ignored(response, 201)
    for message in Notification.objects.filter(kind="message"):
        assert (message.patient_id, message.created_by_id) == (world.alice.pk, world.clinician.pk)
        assert message.recipient_id != world.bob.user.pk
    # A reading or treatment naming bob's patient id is refused item by item, not stored for bob.
    reading = {"patient": world.bob.pk, "timestamp": "2026-01-01T00:00:00Z", "value": 100, "unit": "mg/dL"}
    assert patient.post("/api/v1/readings", reading, format="json").status_code == 400
    treatment = {"patient": world.bob.pk, "timestamp": "2026-01-01T00:00:00Z", "kind": "carbs", "carbs_g": 10}
    assert patient.post("/api/v1/treatments", treatment, format="json").status_code == 400
    # The patient app's own reading with hostile extras lands on alice, nobody else.
    own = hostile(world, {"timestamp": "2026-01-01T00:05:00Z", "value": 101, "unit": "mg/dL"})
    own.pop("patient")
    assert patient.post("/api/v1/readings", own, format="json").status_code == 200
    assert GlucoseReading.objects.filter(value_mgdl=101).get().patient_id == world.alice.pk

    bob_after = (CareTeamConsent.objects.filter(patient=world.bob).count(), CaregiverLink.objects.filter(patient=world.bob).count(),
                 Reminder.objects.filter(patient=world.bob).count(), Notification.objects.filter(patient=world.bob).count(),
                 GlucoseReading.objects.filter(patient=world.bob).count(), Treatment.objects.filter(patient=world.bob).count())
    assert bob_after == bob_before
    _roles_unchanged(world)
