from django.apps import AppConfig


class ReadingsConfig(AppConfig):
    name = "glucoscope.readings"
    label = "readings"
    default_auto_field = "django.db.models.BigAutoField"
