"""Redis killed and started again under the facade's stores: each keeps its stated policy.

A real redis-server (append-only, fsync always) is killed with SIGKILL and started again on
the same port and data, as a crash and a restart would do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from api_facade.auth.ratelimit import RateLimiter, parse_limit
from api_facade.auth.tokens import RedisTokenStore, TokenService
from api_facade.cache import RedisCache
from api_facade.redis_connection import RedisConnection, RedisUnavailableError
from api_facade.sessions import RedisSessionStore, Turn
from loadtests.processes import RedisServer, redis_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as running:
        yield running


@pytest.fixture
async def connection(server: RedisServer) -> AsyncIterator[RedisConnection]:
    # A short probe interval: the test waits for recovery, not for a production setting.
    redis = RedisConnection(server.url, probe_interval_s=0.2, log_interval_s=0.5)
    yield redis
    await redis.close()


def fallbacks(use: str) -> float:
    return REGISTRY.get_sample_value("milo_redis_fallbacks_total", {"use": use}) or 0.0


async def recovered(redis: RedisConnection, timeout_s: float = 5.0) -> float:
    """Seconds until a command succeeds again (the probe of /ready does the same)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            await redis.run("test", redis.client.ping)
            return time.monotonic() - started
        except RedisUnavailableError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"Redis not usable again {timeout_s} s after it came back")


async def test_outage_fails_fast_logs_once_and_recovers_without_restart(
    server: RedisServer, connection: RedisConnection, caplog: pytest.LogCaptureFixture
) -> None:
    await connection.client.set("k", "v")
    assert await connection.run("test", lambda: connection.client.get("k")) == "v"  # a pooled connection exists
    server.kill()
    caplog.set_level(logging.WARNING, logger="api_facade.redis")
    started = time.monotonic()
    failures = 0
    while time.monotonic() - started < 1.2:
        with pytest.raises(RedisUnavailableError):
            await connection.run("test", lambda: connection.client.get("k"))
        failures += 1
    assert not connection.up
    assert failures > 50, "commands during an outage must fail at once, not wait for a timeout each"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    # One line when it started, then at most one per log interval (0.5 s): not one per command.
    assert 1 <= len(errors) <= 4, [r.getMessage() for r in errors]
    assert "unavailable" in errors[0].getMessage()

    server.start()
    assert await recovered(connection) < 1.0
    # The pooled connections from before the kill are dead; the next commands must not see it.
    for _ in range(20):
        assert await connection.run("test", lambda: connection.client.get("k")) == "v"
    assert connection.up
    assert any("back after" in r.getMessage() for r in caplog.records)


async def test_tokens_fail_closed(server: RedisServer, connection: RedisConnection) -> None:
    service = TokenService(RedisTokenStore(connection), ("standard",))
    issued = await service.create("app", "standard", ("chat",))
    assert (await service.verify(issued.token)).name == "app"
    server.kill()
    with pytest.raises(RedisUnavailableError):  # the facade answers 503 store_unavailable
        await service.verify(issued.token)
    with pytest.raises(RedisUnavailableError):
        await service.verify("mv_0123456789abcdef_" + "x" * 43)  # no guessing either way
    server.start()
    await recovered(connection)
    assert (await service.verify(issued.token)).name == "app"  # the token survived the crash


async def test_rate_limits_fall_back_to_memory_and_go_back_to_redis(
    server: RedisServer, connection: RedisConnection
) -> None:
    limiter = RateLimiter(connection)
    item = parse_limit("3/minute")
    assert (await limiter.hit(item, "ip", "tts", "a")).remaining == 2
    server.kill()
    before = fallbacks("rate_limits")
    states = [await limiter.hit(item, "ip", "tts", "a") for _ in range(4)]
    # Counted in this process meanwhile: still limited, never an error.
    assert [s.allowed for s in states] == [True, True, True, False]
    assert fallbacks("rate_limits") == before + 4
    server.start()
    await recovered(connection)
    # Back on Redis: the count from before the outage is there (one hit), plus this one.
    assert (await limiter.hit(item, "ip", "tts", "a")).remaining == 1


async def test_translation_cache_falls_back_to_memory(server: RedisServer, connection: RedisConnection) -> None:
    cache = RedisCache(connection, ttl_s=60)
    await cache.set("key-before", "salama")
    server.kill()
    before = fallbacks("translation_cache")
    assert await cache.get("key-before") is None  # a miss, not an error: the model translates again
    await cache.set("key-during", "bonjour")
    assert await cache.get("key-during") == "bonjour"
    assert fallbacks("translation_cache") == before + 3
    server.start()
    await recovered(connection)
    assert await cache.get("key-before") == "salama"


async def test_sessions_refuse_writes_and_read_a_known_copy(server: RedisServer, connection: RedisConnection) -> None:
    store = RedisSessionStore(connection, ttl_s=600)
    turns = [Turn("user", "Salama"), Turn("assistant", "Salama tompoko")]
    await store.append("s1", turns)
    server.kill()
    with pytest.raises(RedisUnavailableError):
        await store.append("s1", [Turn("user", "Inona no vaovao?")])
    with pytest.raises(RedisUnavailableError):  # a chat turn's read: refused before the model runs
        await store.load("s1")
    assert await store.load("s1", stale_ok=True) == turns  # showing the session: this replica's copy
    with pytest.raises(RedisUnavailableError):
        await store.load("never-seen-here", stale_ok=True)
    server.start()
    await recovered(connection)
    assert await store.load("s1") == turns  # nothing stored was lost, nothing half-written


async def test_a_copy_is_not_trusted_once_another_replica_appended(
    server: RedisServer, connection: RedisConnection
) -> None:
    here, there = RedisSessionStore(connection, ttl_s=600), RedisSessionStore(connection, ttl_s=600)
    await here.append("s2", [Turn("user", "one")])
    await there.append("s2", [Turn("user", "two")])
    await here.append("s2", [Turn("user", "three")])  # this replica never saw "two": its copy is dropped
    server.kill()
    with pytest.raises(RedisUnavailableError):
        await here.load("s2", stale_ok=True)
