from django.apps import AppConfig


class WebConfig(AppConfig):
    """Server-rendered care-team pages (triage dashboard, patient page, AGP PDF)."""

    name = "glucoscope.web"
    label = "web"
    default_auto_field = "django.db.models.BigAutoField"
