"""API tokens: issue, verify, rotate with grace, revoke, expire; only salted hashes stored."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis import Redis

from api_facade.auth.tokens import (
    FileTokenStore,
    InvalidTokenError,
    RedisTokenStore,
    TokenError,
    TokenService,
    TokenStore,
)
from api_facade.redis_connection import RedisConnection

TIERS = ("premium", "standard")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["file", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TokenStore]:
    if request.param == "file":
        yield FileTokenStore(tmp_path / "tokens.json")
        return
    url = request.getfixturevalue("redis_url")
    Redis.from_url(url).flushdb()
    connection = RedisConnection(url)
    redis_store = RedisTokenStore(connection)
    redis_store.url = url  # type: ignore[attr-defined]
    yield redis_store
    await connection.close()


def stored_bytes(store: TokenStore) -> str:
    """Everything the store wrote, as text: the file, or every Milo key in Redis."""
    if isinstance(store, FileTokenStore):
        return store.path.read_text()
    redis = Redis.from_url(store.url, decode_responses=True)  # type: ignore[attr-defined]
    values = {key: redis.hgetall(key) if redis.type(key) == "hash" else redis.get(key) for key in redis.keys("milo:*")}
    return json.dumps(values)


async def test_create_verify_and_store_holds_only_salted_hashes(store: TokenStore) -> None:
    service = TokenService(store, TIERS)
    one = await service.create("app-one", "premium", ("stt", "tts"))
    two = await service.create("app-two", "standard", ("chat",))
    assert one.token.startswith("mv_") and len(one.token.split("_", 2)[2]) == 43  # 256-bit secret
    principal = await service.verify(one.token)
    assert (principal.name, principal.tier, principal.scopes) == ("app-one", "premium", {"stt", "tts"})
    assert (await service.verify(two.token)).scopes == {"chat"}

    text = stored_bytes(store)
    for issued in (one, two):
        secret = issued.token.split("_", 2)[2]
        assert secret not in text and issued.token not in text
        stored = issued.record.secrets[0]
        assert stored.hash in text and stored.salt in text
    # Two secrets never share a salt.
    assert one.record.secrets[0].salt != two.record.secrets[0].salt


async def test_wrong_malformed_and_unknown_tokens_fail(store: TokenStore) -> None:
    service = TokenService(store, TIERS)
    issued = await service.create("app", "standard", ("tts",))
    prefix, key_id, secret = issued.token.split("_", 2)
    forged = f"{prefix}_{key_id}_{'A' * 43}"
    unknown_key = f"{prefix}_{'0' * 16}_{secret}"
    for bad in (forged, unknown_key, "not-a-token", issued.token + "x", ""):
        with pytest.raises(InvalidTokenError):
            await service.verify(bad)


async def test_rotation_keeps_old_secret_for_the_grace_period_only(store: TokenStore) -> None:
    clock = Clock()
    service = TokenService(store, TIERS, clock=clock)
    old = await service.create("app", "standard", ("tts",))
    new = await service.rotate("app", grace_s=60)
    assert new.token != old.token
    clock.now += 59
    assert (await service.verify(old.token)).name == "app"
    assert (await service.verify(new.token)).name == "app"
    clock.now += 2
    with pytest.raises(InvalidTokenError, match="expired"):
        await service.verify(old.token)
    assert (await service.verify(new.token)).name == "app"
    # A later rotation drops the secret that already expired.
    newer = await service.rotate("app", grace_s=0)
    record = await store.get("app")
    assert record is not None and len(record.secrets) == 2
    with pytest.raises(InvalidTokenError):
        await service.verify(new.token)
    assert (await service.verify(newer.token)).name == "app"


async def test_revoke_and_expiry(store: TokenStore) -> None:
    clock = Clock()
    service = TokenService(store, TIERS, clock=clock)
    kept = await service.create("kept", "standard", ("chat",), expires_in_s=100)
    gone = await service.create("gone", "standard", ("chat",))
    assert await service.revoke("gone")
    assert not await service.revoke("gone")
    with pytest.raises(InvalidTokenError):
        await service.verify(gone.token)
    assert (await service.verify(kept.token)).name == "kept"
    clock.now += 100
    with pytest.raises(InvalidTokenError, match="expired"):
        await service.verify(kept.token)
    assert [r.name for r in await service.list()] == ["kept"]


async def test_create_refuses_bad_names_tiers_scopes_and_duplicates(store: TokenStore) -> None:
    service = TokenService(store, TIERS)
    await service.create("app", "standard", ("tts",))
    with pytest.raises(TokenError, match="already exists"):
        await service.create("app", "premium", ("tts",))
    with pytest.raises(TokenError, match="tier"):
        await service.create("x", "gold", ("tts",))
    with pytest.raises(TokenError, match="scopes"):
        await service.create("x", "standard", ("dance",))
    with pytest.raises(TokenError, match="scopes"):
        await service.create("x", "standard", ())
    with pytest.raises(TokenError, match="name"):
        await service.create("../etc", "standard", ("tts",))
    with pytest.raises(TokenError, match="no token"):
        await service.rotate("nobody", 10)


async def test_public_view_has_no_secret_material(store: TokenStore) -> None:
    service = TokenService(store, TIERS)
    issued = await service.create("app", "premium", ("admin",))
    view = (await service.list())[0].public()
    assert set(view) == {"name", "tier", "scopes", "created_at", "expires_at", "active_secrets", "key_ids"}
    assert issued.record.secrets[0].hash not in json.dumps(view)


def test_file_store_sees_changes_made_by_another_process(tmp_path: Path) -> None:
    """The CLI writes the file; a running facade's store must see it on the next request."""
    path = tmp_path / "tokens.json"
    facade, cli = TokenService(FileTokenStore(path), TIERS), TokenService(FileTokenStore(path), TIERS)
    issued = asyncio.run(cli.create("app", "standard", ("tts",)))
    assert asyncio.run(facade.verify(issued.token)).name == "app"
    asyncio.run(cli.revoke("app"))
    with pytest.raises(InvalidTokenError):
        asyncio.run(facade.verify(issued.token))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
