"""Staff read the audit log in the admin; nobody can add, change or delete entries there."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from glucoscope.audit.models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ("at", "actor_label", "actor_role", "action", "patient_id", "method", "route", "status_code", "ip")
    list_filter = ("action", "actor_kind", "actor_role", ("at", admin.DateFieldListFilter))
    # Exact filters by patient and actor: ?patient_id=7, ?actor_user_id=3 or ?actor_label=dr-dan.
    search_fields = ("=patient_id", "=actor_user_id", "actor_label", "request_id", "path")
    date_hierarchy = "at"
    ordering = ("-at", "-id")
    list_per_page = 100
    show_full_result_count = False  # a COUNT(*) over millions of rows on every page is too slow
    readonly_fields = [f.name for f in AuditEntry._meta.fields]

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # Filter links such as ?patient_id=7 and ?actor_user_id=3 for fields not in list_filter.
        return lookup in {"patient_id", "actor_user_id", "actor_label"} or super().lookup_allowed(lookup, value, request)  # type: ignore[arg-type]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
