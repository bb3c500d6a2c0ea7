"""The Celery application. Configuration lives in Django settings under CELERY_*."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "glucoscope.settings")

app = Celery("glucoscope")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Signal handlers: workers keep their database connections between tasks, recycled as Django does
# between requests; request ids travel in task headers, task ids in worker log lines, and workers
# log with settings.LOGGING.
import glucoscope.database_connections  # noqa: E402
import glucoscope.observability.celery_signals  # noqa: E402, F401
