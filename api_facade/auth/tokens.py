"""API tokens: issued once, stored only as salted hashes, rotated with a grace period.

A token reads ``mv_<key id>_<secret>``. The key id (64 random bits, not secret) finds the
stored record; the secret (256 random bits) is checked against ``HMAC-SHA256(salt, secret)``
in constant time. A fast hash is the right one here: the secret is random, not a password,
so no dictionary applies and 2^256 guesses are out of reach, while every request pays the
hash. The token itself is shown once, at creation or rotation, and never stored or logged.

Records live in Redis when ``MILO_REDIS_URL`` is set (every facade replica sees a
revocation on its next request) or in a JSON file under the data directory. The CLI
(``milo-voice tokens``) and the admin routes both go through ``TokenService``.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from api_facade.redis_connection import RedisConnection

SCOPES = ("stt", "tts", "translate", "chat", "admin")
TOKEN_PATTERN = re.compile(r"^mv_(?P<key_id>[0-9a-f]{16})_(?P<secret>[A-Za-z0-9_-]{43})$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Compared against when the key id is unknown, so that a miss costs what a hit costs.
_DUMMY_SALT = secrets.token_bytes(16)


class TokenError(Exception):
    """A token operation that cannot be done (unknown name, name taken, bad tier or scope)."""


class InvalidTokenError(Exception):
    """The presented token is malformed, unknown, revoked or expired (HTTP 401)."""


def _digest(salt: bytes, secret: str) -> str:
    return hmac.new(salt, secret.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class StoredSecret:
    """One secret of a token, as stored: its key id, salt and hash, and when it stops working."""

    key_id: str
    salt: str
    hash: str
    created_at: float
    expires_at: float | None = None  # set on the old secret when the token is rotated

    def valid_at(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True)
class TokenRecord:
    name: str
    tier: str
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float | None = None
    secrets: tuple[StoredSecret, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenRecord:
        fields = {**data, "scopes": tuple(data["scopes"]), "secrets": tuple(StoredSecret(**s) for s in data["secrets"])}
        return cls(**fields)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> TokenRecord:
        return cls.from_dict(json.loads(text))

    def public(self, now: float | None = None) -> dict[str, object]:
        """What may be shown (list, admin routes): no salt, no hash."""
        now = time.time() if now is None else now
        return {
            "name": self.name,
            "tier": self.tier,
            "scopes": list(self.scopes),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "active_secrets": sum(1 for s in self.secrets if s.valid_at(now)),
            "key_ids": [s.key_id for s in self.secrets if s.valid_at(now)],
        }


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name, tier and scopes."""

    name: str
    tier: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class IssuedToken:
    """A token as issued: the only moment its secret is known."""

    token: str
    record: TokenRecord


def _new_secret(now: float) -> tuple[str, StoredSecret]:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    stored = StoredSecret(key_id=key_id, salt=salt.hex(), hash=_digest(salt, secret), created_at=now)
    return f"mv_{key_id}_{secret}", stored


# -- storage ---------------------------------------------------------------------


class TokenStore(Protocol):
    async def get(self, name: str) -> TokenRecord | None: ...

    async def name_of_key(self, key_id: str) -> str | None: ...

    async def add(self, record: TokenRecord) -> bool:
        """Store a new record; False when the name is taken."""
        ...

    async def replace(self, record: TokenRecord, dropped_key_ids: list[str]) -> None: ...

    async def delete(self, name: str) -> bool: ...

    async def all(self) -> list[TokenRecord]: ...

    async def close(self) -> None: ...


class RedisTokenStore:
    """``milo:tokens:<name>`` holds the record (JSON); ``milo:token-keys`` maps key id -> name.

    While Redis is down every call raises ``RedisUnavailableError``: tokens fail closed (the
    facade answers 503 with Retry-After), because a token cannot be checked without its record.
    """

    RECORD = "milo:tokens:"
    KEYS = "milo:token-keys"
    USE = "tokens"

    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        self._redis = connection.client

    async def get(self, name: str) -> TokenRecord | None:
        text = await self._connection.run(self.USE, lambda: self._redis.get(self.RECORD + name))
        return TokenRecord.from_json(text) if text else None

    async def name_of_key(self, key_id: str) -> str | None:
        return await self._connection.run(self.USE, lambda: self._redis.hget(self.KEYS, key_id))

    async def add(self, record: TokenRecord) -> bool:
        async def add() -> bool:
            if not await self._redis.set(self.RECORD + record.name, record.to_json(), nx=True):
                return False
            await self._redis.hset(self.KEYS, mapping={s.key_id: record.name for s in record.secrets})
            return True

        return await self._connection.run(self.USE, add)

    async def replace(self, record: TokenRecord, dropped_key_ids: list[str]) -> None:
        async def replace() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self.RECORD + record.name, record.to_json())
                pipe.hset(self.KEYS, mapping={s.key_id: record.name for s in record.secrets})
                if dropped_key_ids:
                    pipe.hdel(self.KEYS, *dropped_key_ids)
                await pipe.execute()

        await self._connection.run(self.USE, replace)

    async def delete(self, name: str) -> bool:
        record = await self.get(name)
        if record is None:
            return False

        async def delete() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.RECORD + name)
                key_ids = [s.key_id for s in record.secrets]
                if key_ids:
                    pipe.hdel(self.KEYS, *key_ids)
                await pipe.execute()

        await self._connection.run(self.USE, delete)
        return True

    async def all(self) -> list[TokenRecord]:
        async def read_all() -> list[TokenRecord]:
            records = []
            async for key in self._redis.scan_iter(match=self.RECORD + "*"):
                text = await self._redis.get(key)
                if text:
                    records.append(TokenRecord.from_json(text))
            return records

        return sorted(await self._connection.run(self.USE, read_all), key=lambda r: r.name)

    async def close(self) -> None:
        """The connection is shared: its owner closes it."""


class FileTokenStore:
    """One JSON file (mode 0600), locked for each change and replaced atomically.

    It is read again whenever it changed on disk, so a token created or revoked by the
    CLI takes effect in a running facade on its next request.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cached: tuple[tuple[int, int], dict[str, TokenRecord]] | None = None

    def _read(self) -> dict[str, TokenRecord]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        version = (stat.st_mtime_ns, stat.st_size)
        if self._cached and self._cached[0] == version:
            return self._cached[1]
        data = json.loads(self.path.read_text() or "{}")
        records = {name: TokenRecord.from_dict(r) for name, r in data.get("tokens", {}).items()}
        self._cached = (version, records)
        return records

    @contextmanager
    def _locked(self) -> Iterator[dict[str, TokenRecord]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._cached = None
            records = dict(self._read())
            yield records
            tmp = self.path.with_suffix(".tmp")
            payload = {"tokens": {name: r.to_dict() for name, r in records.items()}}
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(payload, out, indent=1)
            os.replace(tmp, self.path)

    async def get(self, name: str) -> TokenRecord | None:
        return self._read().get(name)

    async def name_of_key(self, key_id: str) -> str | None:
        for record in self._read().values():
            if any(s.key_id == key_id for s in record.secrets):
                return record.name
        return None

    async def add(self, record: TokenRecord) -> bool:
        with self._locked() as records:
            if record.name in records:
                return False
            records[record.name] = record
        return True

    async def replace(self, record: TokenRecord, dropped_key_ids: list[str]) -> None:
        with self._locked() as records:
            records[record.name] = record

    async def delete(self, name: str) -> bool:
        with self._locked() as records:
            return records.pop(name, None) is not None

    async def all(self) -> list[TokenRecord]:
        return sorted(self._read().values(), key=lambda r: r.name)

    async def close(self) -> None:
        return None


def open_token_store(redis: RedisConnection | None, data_dir: Path) -> TokenStore:
    return RedisTokenStore(redis) if redis is not None else FileTokenStore(data_dir / "tokens.json")


# -- operations ------------------------------------------------------------------


class TokenService:
    """Create, list, rotate, revoke and verify tokens over one store."""

    def __init__(self, store: TokenStore, tiers: tuple[str, ...], clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.tiers = tiers
        self._clock = clock
        # Serialises read-modify-write of one process; Redis replicas rely on names being rare to rotate at once.
        self._lock = asyncio.Lock()

    def _check(self, name: str, tier: str, scopes: tuple[str, ...]) -> None:
        if not NAME_PATTERN.match(name):
            raise TokenError(f"name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        if tier not in self.tiers:
            raise TokenError(f"tier {tier!r}: expected one of {', '.join(self.tiers)}")
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise TokenError(f"scopes {', '.join(unknown) or '(none)'}: expected some of {', '.join(SCOPES)}")

    async def create(
        self, name: str, tier: str, scopes: tuple[str, ...], expires_in_s: float | None = None
    ) -> IssuedToken:
        scopes = tuple(dict.fromkeys(scopes))
        self._check(name, tier, scopes)
        now = self._clock()
        token, secret = _new_secret(now)
        record = TokenRecord(
            name=name,
            tier=tier,
            scopes=scopes,
            created_at=now,
            expires_at=now + expires_in_s if expires_in_s else None,
            secrets=(secret,),
        )
        if not await self.store.add(record):
            raise TokenError(f"a token named {name!r} already exists; rotate or revoke it")
        return IssuedToken(token, record)

    async def rotate(self, name: str, grace_s: float) -> IssuedToken:
        """A new secret; the current ones keep working for ``grace_s`` seconds, then fail."""
        async with self._lock:
            record = await self.store.get(name)
            if record is None:
                raise TokenError(f"no token named {name!r}")
            now = self._clock()
            token, secret = _new_secret(now)
            kept, dropped = [], []
            for old in record.secrets:
                if not old.valid_at(now):
                    dropped.append(old.key_id)
                    continue
                ends = now + grace_s if old.expires_at is None else min(old.expires_at, now + grace_s)
                kept.append(replace(old, expires_at=ends))
            rotated = replace(record, secrets=(*kept, secret))
            await self.store.replace(rotated, dropped)
            return IssuedToken(token, rotated)

    async def revoke(self, name: str) -> bool:
        return await self.store.delete(name)

    async def list(self) -> list[TokenRecord]:
        return await self.store.all()

    async def verify(self, token: str) -> Principal:
        """The principal of a valid token; ``InvalidTokenError`` otherwise (never says which part failed)."""
        match = TOKEN_PATTERN.match(token)
        if not match:
            raise InvalidTokenError("malformed token")
        key_id, secret = match["key_id"], match["secret"]
        name = await self.store.name_of_key(key_id)
        record = await self.store.get(name) if name else None
        stored = next((s for s in record.secrets if s.key_id == key_id), None) if record else None
        salt = bytes.fromhex(stored.salt) if stored else _DUMMY_SALT
        expected = stored.hash if stored else "0" * 64
        matches = hmac.compare_digest(_digest(salt, secret), expected)
        now = self._clock()
        if not (record and stored and matches):
            raise InvalidTokenError("unknown or revoked token")
        if not stored.valid_at(now) or (record.expires_at is not None and now >= record.expires_at):
            raise InvalidTokenError("expired token")
        return Principal(record.name, record.tier, frozenset(record.scopes))
