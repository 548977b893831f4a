"""Rate limits per client IP and per token, per route family, shared by replicas through Redis.

The counting is a moving window: exact (no burst at window edges). In Redis it is the ``limits``
library's, atomic through its Lua scripts, so several facade replicas share one count. Without
Redis the windows live in process (``MemoryWindows``), and so do they while Redis is down (each
replica then counts alone, counted in ``milo_redis_fallbacks_total``): a limit that is briefly per
replica is better than refusing or failing every request. The headers follow the IETF RateLimit fields
draft: ``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` (seconds) and
``RateLimit-Policy``.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from api_facade.redis_connection import RedisConnection

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class LimitState:
    """One limit after a request was counted against it."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until a slot frees up
    window_s: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
            "RateLimit-Policy": f"{self.limit};w={self.window_s}",
        }


@cache
def parse_limit(text: str) -> RateLimitItem:
    """``"30/minute"``, ``"3 per 2 seconds"``: the ``limits`` notation (parsed once per text)."""
    return parse(text)


def parse_networks(entries: Sequence[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]) -> str:
    """The address a request came from, believing ``X-Forwarded-For`` only from trusted proxies.

    Proxies append the address they received from, so the list is read from the right:
    the first address that is not a trusted proxy is the client. A peer that is not a
    trusted proxy is the client whatever header it sends.
    """
    if not peer:
        return "unknown"
    if not forwarded_for or not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a forged or garbled entry: trust nothing beyond the proxy
        if not _is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _is_trusted(address: str, trusted: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


class MemoryWindows:
    """Moving windows counted in this process: each key's hits, oldest first, inside its window.

    A hit first drops its key's hits that left the window (the oldest first, so each is dropped
    once), then is counted if the window has room. The ``limits`` library's in-memory storage
    handed a pass over every key to a thread after nearly every hit, holding the key's lock
    meanwhile, and copied the key's list of hits on each pass: under load each request waited on
    those hand-overs. Here there is no thread and no lock (one event loop uses it); keys idle
    for a whole window are dropped every ``SWEEP_S``.
    """

    SWEEP_S = 10.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[float, deque[float]]] = {}  # by key: its window's seconds, its hits
        self._next_sweep = clock() + self.SWEEP_S

    def hit(self, item: RateLimitItem, key: tuple[str, ...]) -> LimitState:
        now, window, name = self._clock(), item.get_expiry(), item.key_for(*key)
        if name not in self._windows:
            self._windows[name] = (window, deque())
        hits = self._windows[name][1]
        while hits and hits[0] < now - window:
            hits.popleft()
        allowed = len(hits) < item.amount
        if allowed:
            hits.append(now)
        if now >= self._next_sweep:
            self._sweep(now)
        oldest = hits[0] if hits else now
        return LimitState(
            allowed, item.amount, max(0, item.amount - len(hits)), max(0, math.ceil(oldest + window - now)), window
        )

    def _sweep(self, now: float) -> None:
        idle = [name for name, (window, hits) in self._windows.items() if not hits or hits[-1] < now - window]
        for name in idle:
            del self._windows[name]
        self._next_sweep = now + self.SWEEP_S

    def __len__(self) -> int:
        return len(self._windows)


class RateLimiter:
    USE = "rate_limits"

    def __init__(self, redis: RedisConnection | None) -> None:
        self._redis = redis
        self._memory = MemoryWindows()
        self._shared = (
            MovingWindowRateLimiter(
                RedisStorage(
                    f"async+{redis.url}",
                    implementation="redispy",
                    key_prefix="milo:ratelimit",
                    connection_pool=redis.client.connection_pool,
                    **redis.retry_options(),
                )
            )
            if redis is not None
            else None
        )

    async def hit(self, item: RateLimitItem, *key: str) -> LimitState:
        if self._shared is None or self._redis is None:
            return self._memory.hit(item, key)
        shared = self._shared

        async def in_memory() -> LimitState:
            return self._memory.hit(item, key)

        return await self._redis.run_or(self.USE, lambda: self._hit(shared, item, key), in_memory)

    @staticmethod
    async def _hit(limiter: MovingWindowRateLimiter, item: RateLimitItem, key: tuple[str, ...]) -> LimitState:
        allowed = await limiter.hit(item, *key)
        stats = await limiter.get_window_stats(item, *key)
        return LimitState(
            allowed=allowed,
            limit=item.amount,
            remaining=max(0, stats.remaining),
            reset_s=max(0, math.ceil(stats.reset_time - time.time())),
            window_s=item.get_expiry(),
        )


def tightest(states: Sequence[LimitState]) -> LimitState:
    """The state to report: the first refused limit, else the one with the fewest calls left."""
    refused = [s for s in states if not s.allowed]
    if refused:
        return max(refused, key=lambda s: s.reset_s)
    return min(states, key=lambda s: (s.remaining, -s.reset_s))
