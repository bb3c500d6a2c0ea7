from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "glucoscope.audit"
    label = "audit"
    verbose_name = "Audit log of PHI access"
