from django.apps import AppConfig
from django.db.backends.signals import connection_created


class ReadingsConfig(AppConfig):
    name = "glucoscope.readings"
    label = "readings"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from glucoscope.readings.services import prepare_connection

        connection_created.connect(prepare_connection, dispatch_uid="readings.prepare_connection")
