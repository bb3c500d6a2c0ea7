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

from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from redis import Redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Skip Redis this long after a failed call (per process).
BACKOFF_SECONDS = 5.0


class _ReusedClientRedisCacheClient(RedisCacheClient):
    """Django's client, keeping one redis-py client per connection pool.

    Django builds a new `redis.Redis` around the pool on every cache call. That is safe but not
    free: on a single-reading POST the two throttle calls spent more CPU constructing clients
    than talking to Redis. A `redis.Redis` is thread-safe (each command borrows a pooled
    connection), so one per pool serves every thread.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Redis] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Redis:
        # Django's own pool helpers (untyped in django-stubs); get_client is its documented hook.
        index: int = self._get_connection_pool_index(write)  # type: ignore[attr-defined]
        client = self._clients.get(index)
        if client is None:
            pool = self._get_connection_pool(write)  # type: ignore[attr-defined]
            client = self._clients[index] = Redis(connection_pool=pool)
        return client


class FailOpenRedisCache(RedisCache):
    _down_until = 0.0

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = _ReusedClientRedisCacheClient

    def _guard(self, call: Callable[[], T], fallback: T) -> T:
        if time.monotonic() < self._down_until:
            return fallback
        try:
            return call()
        except RedisError as exc:
            FailOpenRedisCache._down_until = time.monotonic() + BACKOFF_SECONDS
            logger.warning("Cache unavailable (%s); continuing without it for %.0f s", exc, BACKOFF_SECONDS)
            return fallback

    def count_in_window(self, key: Any, seconds: int, version: int | None = None) -> int:
        """Add one to a counter that lives `seconds` from its first hit; returns the new count.

        One round trip (INCR and EXPIRE NX in a pipeline). While Redis is unreachable it answers 1,
        so callers that limit rates let requests through, as the rest of this cache fails open.
        """
        def hit() -> int:
            full_key = self.make_and_validate_key(key, version=version)
            pipeline = self._cache.get_client(full_key, write=True).pipeline(transaction=False)
            pipeline.incr(full_key)
            pipeline.expire(full_key, seconds, nx=True)
            return int(pipeline.execute()[0])

        return self._guard(hit, 1)

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


def count_in_window(key: str, seconds: int) -> int:
    """Add one to the default cache's counter `key`, which lives `seconds` from its first hit; the new count.

    On Redis one round trip (FailOpenRedisCache.count_in_window). Other backends (the in-memory cache
    of development and tests) take two calls: add, then incr.
    """
    cache = caches["default"]
    if isinstance(cache, FailOpenRedisCache):
        return cache.count_in_window(key, seconds)
    cache.add(key, 0, seconds)
    try:
        return cache.incr(key)
    except ValueError:  # expired between the two calls
        cache.add(key, 1, seconds)
        return 1
