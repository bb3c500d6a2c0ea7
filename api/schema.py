"""OpenAPI schema extensions: the non-JWT credentials, and the error responses every operation documents."""

from __future__ import annotations

from typing import Any

from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ComponentRegistry, ResolvedComponent
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework_simplejwt.views import TokenViewBase


class VendorApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "api.authentication.VendorApiKeyAuthentication"
    name = "VendorApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`Api-Key <key>`: a vendor organisation's key (shown once when created)."}


class RevocableJWTScheme(SimpleJWTScheme):
    """The Bearer scheme for the JWT authenticator that also checks revocation (same header, same tokens)."""

    target_class = "api.authentication.RevocableJWTAuthentication"
    optional = True


class NightscoutSecretScheme(OpenApiAuthenticationExtension):
    target_class = "api.authentication.NightscoutAuthentication"
    name = "NightscoutApiSecret"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "header", "name": "api-secret",
                "description": "SHA-1 hex of the patient's Nightscout secret (or `?token=`); it identifies the patient."}


# --- Error responses ------------------------------------------------------------------------------
# Every operation documents each error status it can answer, derived from what the view does, so the
# schema stays true as endpoints are added (tests/fuzz checks every response against it).

ERROR_SCHEMA = {
    "type": "object",
    "description": "A message for the client; never internals.",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}
VALIDATION_ERROR_SCHEMA = {
    "type": "object",
    "description": "Field-level messages: each key names the field (or `non_field_errors`, or `detail` when the "
                   "body could not be parsed at all) and holds its messages.",
    "additionalProperties": {"oneOf": [
        {"type": "array", "items": {}},
        {"type": "string"},
        {"type": "object"},
    ]},
    "minProperties": 1,
}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer", "minimum": 0},
                                "description": "Seconds to wait before retrying.", "required": True}}
ERROR_DESCRIPTIONS = {
    400: "Invalid input; the body names each offending field.",
    401: "Missing, invalid, expired or revoked credential.",
    403: "Authenticated, but this credential or role may not do this.",
    404: "Not found, or outside the caller's scope (existence is not revealed).",
    413: "Body too large (bytes, after gzip decoding) or too many items in one batch.",
    415: "Unsupported Content-Type or Content-Encoding; send JSON (optionally gzip).",
    429: "Too many requests; retry after `Retry-After` seconds.",
    503: "A backing service (database) is temporarily unavailable; retry after `Retry-After` seconds.",
}
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# The item-by-item outcome of a batch (POST readings, treatments, FHIR bundles); also the 400 body when no item
# was valid.
BATCH_OUTCOME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "accepted": {"type": "integer", "minimum": 0},
        "duplicates": {"type": "integer", "minimum": 0},
        "rejected": {"type": "array", "items": {
            "type": "object",
            "properties": {"index": {"type": "integer", "minimum": 0},
                           "errors": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}}},
            "required": ["index", "errors"],
        }},
    },
    "required": ["accepted", "duplicates", "rejected"],
}


def batch_or_validation_error(outcome: dict[str, Any] = BATCH_OUTCOME_SCHEMA) -> dict[str, Any]:
    """A batch's 400: the item-by-item outcome when every item was rejected, or field errors for the whole body."""
    return {"oneOf": [outcome, VALIDATION_ERROR_SCHEMA]}


def _component(registry: Any, name: str, schema: dict[str, Any]) -> dict[str, str]:
    component = ResolvedComponent(name=name, type=ResolvedComponent.SCHEMA, object=name, schema=schema)
    registry.register_on_missing(component)
    return component.ref


class GlucoScopeAutoSchema(AutoSchema):
    """drf-spectacular's AutoSchema plus the error statuses each operation can return (GUIDE.md §5)."""

    def get_operation(self, path: str, path_regex: str, path_prefix: str, method: str,
                      registry: ComponentRegistry) -> dict[str, Any] | None:
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        error_ref = _component(registry, "Error", ERROR_SCHEMA)
        validation_ref = _component(registry, "ValidationError", VALIDATION_ERROR_SCHEMA)
        responses: dict[str, Any] = operation.setdefault("responses", {})
        declared = {int(code) for code in responses if code.isdigit() and int(code) >= 400}
        for code in sorted(set(self._error_statuses(operation)) | declared):
            response = responses.setdefault(str(code), {"description": ERROR_DESCRIPTIONS.get(code, "Error.")})
            if response.get("content"):
                continue  # the view declared its own body (e.g. a batch's item-by-item 400)
            # A view may declare just the status (`{404: None}`); it gets the standard body.
            response["description"] = ERROR_DESCRIPTIONS.get(code, response["description"])
            response["content"] = {"application/json": {"schema": validation_ref if code == 400 else error_ref}}
            if code in (429, 503):
                response["headers"] = _RETRY_AFTER
        return operation

    def _error_statuses(self, operation: dict[str, Any]) -> list[int]:
        view = self.view
        codes = [503]  # every endpoint reads the database
        parameters = operation.get("parameters", [])
        # OpenAPI 3.0 documents no body for DELETE; a view that reads one there says so in `openapi_body_methods`.
        has_body = ("requestBody" in operation or (self.method in BODY_METHODS and self.method != "DELETE")
                    or self.method in getattr(view, "openapi_body_methods", ()))
        if has_body or any(p.get("in") == "query" for p in parameters):
            codes.append(400)
        if has_body:
            codes += [413, 415]
        if any(p.get("in") == "path" for p in parameters):
            codes.append(404)
        # Sign-in and refresh authenticate by their body: a wrong password or refresh token is a 401 too.
        authenticates = bool(view.get_authenticators()) or isinstance(view, TokenViewBase)
        if authenticates and not getattr(view, "openapi_never_401", False):
            codes.append(401)
        if any(not isinstance(p, AllowAny) for p in view.get_permissions()):
            codes.append(403)
        if view.get_throttles():
            codes.append(429)
        return sorted(codes)


def postprocess_literal_dollar_paths(result: dict[str, Any], generator: Any, **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular drops `$` from literal path segments (FHIR operations such as `$submit-cgm-bundle`);
    put it back, so the documented path is the one that answers."""
    for documented, real in (("/fhir/submit-cgm-bundle", "/fhir/$submit-cgm-bundle"),):
        result["paths"] = {key.replace(documented, real): value for key, value in result["paths"].items()}
    return result


# --- Request bodies of the batch endpoints ---------------------------------------------------------
TIMESTAMP_SCHEMA: dict[str, Any] = {
    "oneOf": [{"type": "string", "minLength": 1, "description": "ISO 8601 with a UTC offset (`Z`, `+01:00`, `+0100`)."},
              {"type": "integer", "minimum": 946_684_800_000, "description": "Epoch milliseconds."}],
    "description": "Not before 2000-01-01 and at most 5 minutes in the future.",
}
TRENDS = ["DoubleUp", "SingleUp", "FortyFiveUp", "Flat", "FortyFiveDown", "SingleDown", "DoubleDown",
          "NONE", "NOT COMPUTABLE", "RATE OUT OF RANGE"]
READING_ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "patient": {"type": "integer", "description": "Required for vendor keys; the patient's own app may omit it."},
        "device": {"type": "string", "maxLength": 100, "description": "Device serial (vendor uploads)."},
        "timestamp": TIMESTAMP_SCHEMA,
        "value": {"oneOf": [{"type": "number", "minimum": 1.1, "maximum": 600},
                            {"type": "string", "enum": ["Low", "High"]}],
                  "description": "20–600 mg/dL or 1.1–33.3 mmol/L; \"Low\"/\"High\" for the sensor's limits."},
        "unit": {"type": "string", "enum": ["mg/dL", "mmol/L"]},
        "trend": {"type": "string", "description": "A Nightscout direction, e.g. " + ", ".join(TRENDS[:7]) + "."},
        "trend_rate": {"type": "number", "minimum": -20, "maximum": 20, "description": "mg/dL per minute."},
    },
    "required": ["timestamp", "value", "unit"],
}
TREATMENT_ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "patient": {"type": "integer", "description": "Required for caregivers and clinicians."},
        "timestamp": TIMESTAMP_SCHEMA,
        "kind": {"type": "string", "enum": ["carbs", "bolus", "basal", "exercise", "note"]},
        "carbs_g": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 500},
        "insulin_units": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 100},
        "basal_rate_u_per_h": {"type": "number", "minimum": 0, "maximum": 35},
        "duration_minutes": {"type": "number", "minimum": 0, "maximum": 1440},
        "note": {"type": "string", "maxLength": 2000},
    },
    "required": ["timestamp"],
}


def batch_request(item: dict[str, Any], *, description: str) -> dict[str, Any]:
    """One item, or an array of 1..MAX_BATCH_ITEMS. In an array each item is validated on its own and an invalid
    one is rejected by index while the others are stored, so the array accepts any item (GUIDE.md §5)."""
    return {
        "oneOf": [item, {"type": "array", "minItems": 1, "maxItems": 10_000,
                         "items": {"anyOf": [item, {"description": "Rejected by index if not a valid item."}]}}],
        "description": description,
    }


class RawSchema(serializers.Serializer):  # type: ignore[type-arg]
    """A named component with a hand-written JSON schema, for bodies no serializer describes (batches, oneOf)."""

    def __init__(self, name: str, schema: dict[str, Any]) -> None:
        super().__init__()
        self.component_name = name
        self.raw_schema = schema


class RawSchemaExtension(OpenApiSerializerExtension):
    target_class = RawSchema

    def get_name(self, auto_schema: Any, direction: Any) -> str:
        return str(self.target.component_name)

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        return dict(self.target.raw_schema)


READING_BATCH = RawSchema("ReadingBatch", batch_request(READING_ITEM_SCHEMA,
                                                         description="Readings; more than 10,000 items answer 413."))
TREATMENT_BATCH = RawSchema("TreatmentBatch", batch_request(TREATMENT_ITEM_SCHEMA,
                                                             description="Treatments; more than 10,000 items answer 413."))
