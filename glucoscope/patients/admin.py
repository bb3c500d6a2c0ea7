from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from rest_framework_api_key.admin import APIKeyModelAdmin

from glucoscope.patients import models


@admin.register(models.User)
class UserAdmin(DjangoUserAdmin):
    fieldsets = (*DjangoUserAdmin.fieldsets, ("GlucoScope", {"fields": ("role",)}))  # type: ignore[misc]
    list_display = ("username", "email", "role", "is_staff")
    list_filter = ("role", "is_staff")


@admin.register(models.Patient)
class PatientAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "diabetes_type", "time_zone", "preferred_unit")
    search_fields = ("user__username",)


@admin.register(models.CareTeam)
class CareTeamAdmin(admin.ModelAdmin):
    search_fields = ("name",)


@admin.register(models.CareTeamMembership)
class CareTeamMembershipAdmin(admin.ModelAdmin):
    list_display = ("care_team", "clinician", "created_at")


@admin.register(models.CareTeamConsent)
class CareTeamConsentAdmin(admin.ModelAdmin):
    list_display = ("care_team", "patient", "granted_at", "revoked_at")


@admin.register(models.CaregiverLink)
class CaregiverLinkAdmin(admin.ModelAdmin):
    list_display = ("patient", "caregiver", "created_at", "revoked_at")


@admin.register(models.VendorOrganization)
class VendorOrganizationAdmin(admin.ModelAdmin):
    search_fields = ("name",)


@admin.register(models.VendorApiKey)
class VendorApiKeyAdmin(APIKeyModelAdmin):
    list_display = [*APIKeyModelAdmin.list_display, "vendor", "last_used_at"]  # type: ignore[assignment]


@admin.register(models.Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ("serial", "model_name", "vendor", "patient")
    search_fields = ("serial",)
