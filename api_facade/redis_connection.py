"""The facade's one Redis connection, and what happens while Redis is away.

Every store that keeps shared state in Redis (tokens, sessions, the translation cache, rate
limits) goes through one ``RedisConnection``:

- its connections are health-checked before reuse and a command that meets a dropped
  connection is retried on a fresh one, so when Redis comes back the next request finds
  it: no stale pooled connection, no restart;
- a failed command marks Redis *down*; while it is down, commands fail at once
  (``RedisUnavailableError``) instead of each request waiting for a connect timeout, and
  one command is let through every ``probe_interval_s`` to find it back;
- the outage is logged once when it starts, at most once per ``log_interval_s`` while it
  lasts (with how many commands failed), and once when it ends, never once per request;
  ``milo_redis_up`` and ``milo_redis_errors_total`` show it on the metrics port.

What each store does when Redis is down is that store's policy, stated where it is
written: tokens fail closed (503), rate limits and the translation cache fall back to
this process's memory, session writes are refused (503).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge
from redis import asyncio as redis_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("api_facade.redis")
T = TypeVar("T")

REDIS_UP = Gauge("milo_redis_up", "1 while the facade reaches Redis, 0 during an outage")
REDIS_ERRORS = Counter("milo_redis_errors_total", "Redis commands that failed for want of Redis", ["use"])
DEGRADED = Counter(
    "milo_redis_fallbacks_total", "Operations served from this process's memory because Redis was down", ["use"]
)

# What a lost Redis looks like to redis-py (and to the ``limits`` library, which uses it).
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError,
)  # fmt: skip


class RedisUnavailableError(Exception):
    """Redis cannot be reached now; ``use`` says which store needed it."""

    def __init__(self, use: str) -> None:
        super().__init__(f"the {use} store (Redis) is unavailable")
        self.use = use


class RedisConnection:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 1.0,
        probe_interval_s: float = 1.0,
        log_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.client = redis_asyncio.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            health_check_interval=5,
            **self.retry_options(),
        )
        self.probe_interval_s = probe_interval_s
        self.log_interval_s = log_interval_s
        self._clock = clock
        self._down_since: float | None = None
        self._next_probe = 0.0
        self._next_log = 0.0
        self._failures_since_log = 0
        REDIS_UP.set(1)

    @staticmethod
    def retry_options() -> dict[str, Any]:
        """A pooled connection that Redis dropped (a restart) fails once; the retry takes a new one.

        Short on purpose: while Redis is really down, a request waits one connect timeout, not
        redis-py's default backoff of seconds.
        """
        return {
            "retry": Retry(ExponentialBackoff(cap=0.1, base=0.01), 2),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        }

    @property
    def up(self) -> bool:
        return self._down_since is None

    def usable(self) -> bool:
        """False while Redis is known down and no probe is due: callers skip it at once."""
        return self._down_since is None or self._clock() >= self._next_probe

    async def run(self, use: str, command: Callable[[], Awaitable[T]]) -> T:
        """``command``'s result; ``RedisUnavailableError`` when Redis is down or just failed."""
        if not self.usable():
            self.failed(use, None)
            raise RedisUnavailableError(use)
        if self._down_since is not None:
            self._next_probe = self._clock() + self.probe_interval_s  # this call is the probe
        try:
            result = await command()
        except OUTAGE_ERRORS as exc:
            self.failed(use, exc)
            raise RedisUnavailableError(use) from exc
        self.succeeded()
        return result

    async def run_or(self, use: str, command: Callable[[], Awaitable[T]], fallback: Callable[[], Awaitable[T]]) -> T:
        """``command``'s result, or ``fallback``'s while Redis is down (counted as a fallback of ``use``)."""
        try:
            return await self.run(use, command)
        except RedisUnavailableError:
            DEGRADED.labels(use).inc()
            return await fallback()

    def failed(self, use: str, error: BaseException | None) -> None:
        """Count a command that Redis did not serve, and log the outage (throttled)."""
        REDIS_ERRORS.labels(use).inc()
        now = self._clock()
        self._failures_since_log += 1
        if self._down_since is None:
            self._down_since = now
            self._next_probe = now + self.probe_interval_s
            self._next_log = now + self.log_interval_s
            self._failures_since_log = 0
            REDIS_UP.set(0)
            log.error("Redis at %s is unavailable (%s: %s); serving by each store's outage policy",
                      self._safe_url(), type(error).__name__, error)  # fmt: skip
        elif now >= self._next_log:
            log.error("Redis still unavailable after %.0f s: %d commands failed in the last %.0f s",
                      now - self._down_since, self._failures_since_log, self.log_interval_s)  # fmt: skip
            self._next_log = now + self.log_interval_s
            self._failures_since_log = 0

    def succeeded(self) -> None:
        if self._down_since is not None:
            log.warning("Redis is back after %.1f s", self._clock() - self._down_since)
            self._down_since = None
            REDIS_UP.set(1)

    def _safe_url(self) -> str:
        # Never log a password: redis://user:secret@host -> redis://host
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"

    async def close(self) -> None:
        await self.client.aclose()
