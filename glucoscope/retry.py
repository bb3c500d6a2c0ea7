"""Errors a later attempt can get past: what a Celery task retries, and what the API answers with 503."""

from __future__ import annotations

from django.db import InterfaceError, OperationalError

#: The database was unreachable or dropped the connection (a restart, a failover): a retry can succeed.
#: Anything else (a bug, bad data) would fail the same way again, so it is not retried.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)
