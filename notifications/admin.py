from django.contrib import admin

from notifications import models


@admin.register(models.DeviceToken)
class DeviceTokenAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "platform", "app_version", "is_active", "last_seen_at", "deactivation_reason")
    list_filter = ("platform", "is_active")
    search_fields = ("user__username",)
    # The token itself is a credential for pushing to the phone; show only its tail.
    exclude = ("token",)
    readonly_fields = ("token_tail",)

    @admin.display(description="token")
    def token_tail(self, obj: models.DeviceToken) -> str:
        return f"…{obj.token[-8:]}"


@admin.register(models.Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("id", "patient", "recipient", "kind", "status", "reason", "created_at", "sent_at", "acked_at", "feedback")
    list_filter = ("kind", "status")
    search_fields = ("patient__user__username", "recipient__username")
    date_hierarchy = "created_at"


@admin.register(models.Preference)
class PreferenceAdmin(admin.ModelAdmin):
    list_display = ("patient", "low_threshold_mgdl", "high_threshold_mgdl", "quiet_start", "quiet_end", "tips_per_day")
    filter_horizontal = ("followers",)


@admin.register(models.Reminder)
class ReminderAdmin(admin.ModelAdmin):
    list_display = ("id", "patient", "kind", "local_time", "weekdays", "every_n_days", "is_active", "next_fire_at")
    list_filter = ("kind", "is_active")


@admin.register(models.Tip)
class TipAdmin(admin.ModelAdmin):
    """The care team edits the tip library here; `manage.py sync_tips` loads notifications/tips/*.json."""

    list_display = ("tip_id", "category", "patterns", "is_active")
    list_filter = ("category", "is_active")
    search_fields = ("tip_id",)


@admin.register(models.TipEngagement)
class TipEngagementAdmin(admin.ModelAdmin):
    list_display = ("patient", "tip", "category", "context", "shown_at", "reward")
    list_filter = ("category", "context")


@admin.register(models.AlertEpisode)
class AlertEpisodeAdmin(admin.ModelAdmin):
    list_display = ("patient", "kind", "started_at", "last_seen_at", "ended_at")
    list_filter = ("kind",)
