"""Chat sessions: every turn is kept; Redis when ``MILO_REDIS_URL`` is set, else in process.

Sessions expire ``ttl_s`` after their last turn. What is sent to the model is trimmed
(``trim_to_budget``, by ``api_facade.conversation``); the store keeps the whole conversation.

While Redis is down, writes are refused (``RedisUnavailableError``, a 503: the caller sends
the turn again, nothing half-stored) and so is a chat turn's read, before the model runs; a
read that only shows a session (``stale_ok``) gets this replica's last copy of it where it
has one, since turns are only ever appended and a copy is a true, maybe shorter, history.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from api_facade.redis_connection import DEGRADED, RedisConnection, RedisUnavailableError


@dataclass(frozen=True)
class Turn:
    role: str
    content: str


class SessionStore(Protocol):
    async def load(self, session_id: str, stale_ok: bool = False) -> list[Turn] | None: ...

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

    async def load(self, session_id: str, stale_ok: bool = False) -> list[Turn] | None:
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
    USE = "sessions"

    def __init__(self, connection: RedisConnection, ttl_s: int, copies: int = 1000) -> None:
        self._connection = connection
        self._redis = connection.client
        self.ttl_s = ttl_s
        # The sessions this replica last read or wrote, for reads while Redis is down.
        self._copies: OrderedDict[str, list[Turn]] = OrderedDict()
        self._max_copies = copies

    def _remember(self, session_id: str, turns: list[Turn] | None) -> None:
        if turns is None:
            self._copies.pop(session_id, None)
            return
        self._copies[session_id] = turns
        self._copies.move_to_end(session_id)
        while len(self._copies) > self._max_copies:
            self._copies.popitem(last=False)

    async def load(self, session_id: str, stale_ok: bool = False) -> list[Turn] | None:
        try:
            items = await self._connection.run(self.USE, lambda: self._redis.lrange(self.prefix + session_id, 0, -1))
        except RedisUnavailableError:
            if stale_ok and session_id in self._copies:
                DEGRADED.labels("sessions").inc()
                return list(self._copies[session_id])
            raise
        turns = [Turn(**json.loads(item)) for item in items] if items else None
        self._remember(session_id, turns)
        return turns

    async def append(self, session_id: str, turns: list[Turn]) -> None:
        key = self.prefix + session_id

        async def append() -> int:
            async with self._redis.pipeline(transaction=True) as pipe:
                rows = [json.dumps({"role": t.role, "content": t.content}, ensure_ascii=False) for t in turns]
                pipe.rpush(key, *rows)
                pipe.expire(key, self.ttl_s)
                length, _ = await pipe.execute()
            return int(length)

        length = await self._connection.run(self.USE, append)
        known = self._copies.get(session_id, [])
        # The copy is exact only if nobody else appended since this replica last saw the session.
        self._remember(session_id, [*known, *turns] if len(known) + len(turns) == length else None)

    async def delete(self, session_id: str) -> bool:
        deleted = await self._connection.run(self.USE, lambda: self._redis.delete(self.prefix + session_id))
        self._remember(session_id, None)
        return bool(deleted)

    async def count(self) -> int:
        async def count() -> int:
            return sum([1 async for _ in self._redis.scan_iter(match=self.prefix + "*", count=500)])

        return await self._connection.run(self.USE, count)

    async def close(self) -> None:
        """The connection is shared: its owner closes it."""


def estimate_tokens(text: str) -> int:
    """An upper estimate without the model's tokenizer (about 3 characters a token, plus markup)."""
    return len(text) // 3 + 8


def trim_to_budget(turns: list[Turn], budget: int) -> list[Turn]:
    """The most recent turns that fit ``budget`` tokens; system turns and the newest turn are always kept."""
    used = sum(estimate_tokens(t.content) for t in turns if t.role == "system")
    kept: set[int] = set()
    for i in range(len(turns) - 1, -1, -1):
        if turns[i].role == "system":
            continue
        cost = estimate_tokens(turns[i].content)
        if kept and used + cost > budget:
            break
        kept.add(i)
        used += cost
    return [t for i, t in enumerate(turns) if i in kept or t.role == "system"]
