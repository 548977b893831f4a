"""Translation cache: Redis when ``MILO_REDIS_URL`` is set (shared by facade replicas), else an in-process LRU.

Keys hold the model revision, the languages and the text, so a new model revision never
serves an old model's translations. While Redis is down the cache is this process's LRU
(counted in ``milo_redis_fallbacks_total``): a cache only saves work, so an outage costs
hits, never a request.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Protocol

from api_facade.redis_connection import RedisConnection


def cache_key(revision: str, source: str, target: str, text: str) -> str:
    digest = hashlib.sha256(f"{revision}\x00{source}\x00{target}\x00{text}".encode()).hexdigest()
    return f"milo:translate:{digest}"


class TranslationCache(Protocol):
    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str) -> None: ...

    async def close(self) -> None: ...


class MemoryCache:
    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, str] = OrderedDict()

    async def get(self, key: str) -> str | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: str) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        self._entries.clear()


class RedisCache:
    USE = "translation_cache"

    def __init__(self, connection: RedisConnection, ttl_s: int, fallback_entries: int = 10_000) -> None:
        self._connection = connection
        self._redis = connection.client
        self.ttl_s = ttl_s
        self._fallback = MemoryCache(fallback_entries)

    async def get(self, key: str) -> str | None:
        return await self._connection.run_or(self.USE, lambda: self._redis.get(key), lambda: self._fallback.get(key))

    async def set(self, key: str, value: str) -> None:
        await self._connection.run_or(
            self.USE, lambda: self._redis.set(key, value, ex=self.ttl_s or None), lambda: self._fallback.set(key, value)
        )

    async def close(self) -> None:
        """The connection is shared: its owner closes it."""
        await self._fallback.close()
