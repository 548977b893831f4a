"""Chat sessions: every turn is kept; Redis when ``MILO_REDIS_URL`` is set, else in process.

Sessions expire ``ttl_s`` after their last turn. What is sent to the model is trimmed
elsewhere (``trim_to_budget``); the store always keeps the whole conversation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis import asyncio as redis_asyncio


@dataclass(frozen=True)
class Turn:
    role: str
    content: str


class SessionStore(Protocol):
    async def load(self, session_id: str) -> list[Turn] | None: ...

    async def append(self, session_id: str, turns: list[Turn]) -> None: ...

    async def delete(self, session_id: str) -> bool: ...

    async def count(self) -> int: ...

    async def close(self) -> None: ...


class MemorySessionStore:
    def __init__(self, ttl_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._sessions: dict[str, tuple[float, list[Turn]]] = {}

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, (deadline, _) in self._sessions.items() if deadline <= now]:
            del self._sessions[key]

    async def load(self, session_id: str) -> list[Turn] | None:
        self._expire()
        entry = self._sessions.get(session_id)
        return list(entry[1]) if entry else None

    async def append(self, session_id: str, turns: list[Turn]) -> None:
        self._expire()
        _, existing = self._sessions.get(session_id, (0.0, []))
        self._sessions[session_id] = (self._clock() + self.ttl_s, existing + turns)

    async def delete(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None

    async def count(self) -> int:
        self._expire()
        return len(self._sessions)

    async def close(self) -> None:
        self._sessions.clear()


class RedisSessionStore:
    """One Redis list per session; RPUSH keeps order and never rewrites stored turns."""

    prefix = "milo:session:"

    def __init__(self, url: str, ttl_s: int) -> None:
        self._redis = redis_asyncio.from_url(url, decode_responses=True)
        self.ttl_s = ttl_s

    async def load(self, session_id: str) -> list[Turn] | None:
        items = await self._redis.lrange(self.prefix + session_id, 0, -1)
        return [Turn(**json.loads(item)) for item in items] if items else None

    async def append(self, session_id: str, turns: list[Turn]) -> None:
        key = self.prefix + session_id
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *(json.dumps({"role": t.role, "content": t.content}, ensure_ascii=False) for t in turns))
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def delete(self, session_id: str) -> bool:
        return bool(await self._redis.delete(self.prefix + session_id))

    async def count(self) -> int:
        return sum([1 async for _ in self._redis.scan_iter(match=self.prefix + "*", count=500)])

    async def close(self) -> None:
        await self._redis.aclose()


def estimate_tokens(text: str) -> int:
    """An upper estimate without the model's tokenizer (about 3 characters a token, plus markup)."""
    return len(text) // 3 + 8


def trim_to_budget(turns: list[Turn], budget: int) -> list[Turn]:
    """The most recent turns that fit ``budget`` tokens; the newest turn is always kept."""
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns):
        cost = estimate_tokens(turn.content)
        if kept and used + cost > budget:
            break
        kept.append(turn)
        used += cost
    return list(reversed(kept))
