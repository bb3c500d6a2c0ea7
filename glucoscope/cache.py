"""A Redis cache that fails open: a Redis outage must not turn every API request into a 500.

The cache holds only disposable state (request-throttle counters, short-lived lookups), while
readings go to PostgreSQL and their work to the outbox. So when Redis is unreachable, reads miss
and writes are dropped, with a warning, and requests go on (throttling pauses until Redis is
back). After a failure Redis is skipped for a few seconds, so an outage does not add a connect
attempt, or a socket timeout, to every request. Found by tests/faults/test_redis_down.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from django.core.cache.backends.redis import RedisCache
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Skip Redis this long after a failed call (per process).
BACKOFF_SECONDS = 5.0


class FailOpenRedisCache(RedisCache):
    _down_until = 0.0

    def _guard(self, call: Callable[[], T], fallback: T) -> T:
        if time.monotonic() < self._down_until:
            return fallback
        try:
            return call()
        except RedisError as exc:
            FailOpenRedisCache._down_until = time.monotonic() + BACKOFF_SECONDS
            logger.warning("Cache unavailable (%s); continuing without it for %.0f s", exc, BACKOFF_SECONDS)
            return fallback

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        return self._guard(lambda: super(FailOpenRedisCache, self).get(key, default, version), default)

    def set(self, key: Any, value: Any, timeout: Any = None, version: int | None = None) -> None:
        kwargs = {} if timeout is None else {"timeout": timeout}
        self._guard(lambda: super(FailOpenRedisCache, self).set(key, value, version=version, **kwargs), None)

    def add(self, key: Any, value: Any, timeout: Any = None, version: int | None = None) -> bool:
        kwargs = {} if timeout is None else {"timeout": timeout}
        return self._guard(lambda: super(FailOpenRedisCache, self).add(key, value, version=version, **kwargs), False)

    def touch(self, key: Any, timeout: Any = None, version: int | None = None) -> bool:
        kwargs = {} if timeout is None else {"timeout": timeout}
        return self._guard(lambda: super(FailOpenRedisCache, self).touch(key, version=version, **kwargs), False)

    def delete(self, key: Any, version: int | None = None) -> bool:
        return self._guard(lambda: super(FailOpenRedisCache, self).delete(key, version), False)

    def has_key(self, key: Any, version: int | None = None) -> bool:
        return self._guard(lambda: super(FailOpenRedisCache, self).has_key(key, version), False)

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return self._guard(lambda: super(FailOpenRedisCache, self).incr(key, delta, version), delta)

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        return self._guard(lambda: super(FailOpenRedisCache, self).get_many(keys, version), {})

    def set_many(self, data: dict[Any, Any], timeout: Any = None, version: int | None = None) -> list[Any]:
        kwargs = {} if timeout is None else {"timeout": timeout}
        return self._guard(lambda: super(FailOpenRedisCache, self).set_many(data, version=version, **kwargs), list(data))

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        self._guard(lambda: super(FailOpenRedisCache, self).delete_many(keys, version), None)
