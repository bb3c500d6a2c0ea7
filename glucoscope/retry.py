"""What a Celery task may retry: only errors a later attempt can get past."""

from __future__ import annotations

from django.db import InterfaceError, OperationalError

#: The database was unreachable or dropped the connection (a restart, a failover): a retry can succeed.
#: Anything else (a bug, bad data) would fail the same way again, so it is not retried.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)
