"""Staff views of the analytics tables in the Django admin (read-only: they are computed, never edited by hand)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from forecasting.models import GlucotypeAssignment, GlucotypeModel, PatientPersonalisation
from glucoscope.web.models import PatientDayCounts


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(GlucotypeModel)
class GlucotypeModelAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "metric", "n_patients", "n_windows", "fit_seconds", "class_mean_sd_mgdl")
    exclude = ("model_json",)  # tslearn JSON: large, and only meaningful to the loader


@admin.register(GlucotypeAssignment)
class GlucotypeAssignmentAdmin(ReadOnlyAdmin):
    list_display = ("patient", "glucotype", "n_windows", "assigned_at", "model")
    list_filter = ("glucotype",)
    list_select_related = ("patient__user", "model")


@admin.register(PatientDayCounts)
class PatientDayCountsAdmin(ReadOnlyAdmin):
    list_display = ("patient", "day", "n", "very_low", "low", "in_range", "high", "very_high", "refreshed_at")
    list_select_related = ("patient__user",)


@admin.register(PatientPersonalisation)
class PatientPersonalisationAdmin(ReadOnlyAdmin):
    list_display = ("patient", "model_version", "fitted_at", "days_of_data", "population_loss", "personal_loss", "kept")
    list_select_related = ("patient__user", "model_version")
    exclude = ("output_layer",)  # 9,288 float32 weights: meaningful only to the worker

    @admin.display(boolean=True, description="own layer kept")
    def kept(self, obj: PatientPersonalisation) -> bool:
        return obj.kept
