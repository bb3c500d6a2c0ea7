"""OpenAPI descriptions of the non-JWT credentials, so /api/docs shows how each endpoint authenticates."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class VendorApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "api.authentication.VendorApiKeyAuthentication"
    name = "VendorApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`Api-Key <key>`: a vendor organisation's key (shown once when created)."}


class NightscoutSecretScheme(OpenApiAuthenticationExtension):
    target_class = "api.authentication.NightscoutAuthentication"
    name = "NightscoutApiSecret"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "header", "name": "api-secret",
                "description": "SHA-1 hex of the patient's Nightscout secret (or `?token=`); it identifies the patient."}
