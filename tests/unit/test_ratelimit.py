"""Rate-limit windows (memory and Redis) and the client address behind trusted proxies."""

from __future__ import annotations

import asyncio

import pytest
from redis import Redis

from api_facade.auth.ratelimit import (
    LimitState,
    MemoryWindows,
    RateLimiter,
    client_ip,
    parse_limit,
    parse_networks,
    tightest,
)
from api_facade.redis_connection import RedisConnection

PROXIES = parse_networks(["10.0.0.0/8", "127.0.0.1"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.7", None, "203.0.113.7"),
        # An untrusted peer's header is ignored: anyone can send one.
        ("203.0.113.7", "198.51.100.1", "203.0.113.7"),
        ("127.0.0.1", "198.51.100.1", "198.51.100.1"),
        # Read from the right, skipping trusted proxies; the client cannot spoof the left part.
        ("10.0.0.2", "6.6.6.6, 198.51.100.1, 10.0.0.9", "198.51.100.1"),
        ("10.0.0.2", "10.0.0.5, 10.0.0.9", "10.0.0.5"),
        ("10.0.0.2", "garbage, 198.51.100.1", "198.51.100.1"),
        ("10.0.0.2", "198.51.100.1, garbage", "10.0.0.2"),
        ("127.0.0.1", "2001:db8::1", "2001:db8::1"),
        (None, "198.51.100.1", "unknown"),
    ],
)
def test_client_ip(peer: str | None, forwarded: str | None, expected: str) -> None:
    assert client_ip(peer, forwarded, PROXIES) == expected


def test_limit_notation() -> None:
    item = parse_limit("3/2 seconds")
    assert (item.amount, item.get_expiry()) == (3, 2)
    assert parse_limit("30/minute").get_expiry() == 60


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_window_counts_refuses_and_frees_up(backend: str, request: pytest.FixtureRequest) -> None:
    url = None
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        Redis.from_url(url).flushdb()
    limiter = RateLimiter(RedisConnection(url) if url else None)
    item = parse_limit("3/1 second")
    states = [await limiter.hit(item, "token", "tts", "app") for _ in range(4)]
    assert [s.allowed for s in states] == [True, True, True, False]
    assert [s.remaining for s in states] == [2, 1, 0, 0]
    assert all(s.limit == 3 and s.window_s == 1 and 0 <= s.reset_s <= 1 for s in states)
    # Another key has its own window.
    assert (await limiter.hit(item, "token", "tts", "other")).allowed
    await asyncio.sleep(1.1)
    assert (await limiter.hit(item, "token", "tts", "app")).allowed


def test_memory_windows_move_and_drop_keys_idle_for_a_window() -> None:
    now = [0.0]
    windows = MemoryWindows(clock=lambda: now[0])
    item, a, b = parse_limit("2/10 seconds"), ("ip", "tts", "a"), ("ip", "tts", "b")
    assert windows.hit(item, a).allowed
    now[0] = 5.0
    assert windows.hit(item, b).allowed
    refused = [windows.hit(item, a), windows.hit(item, a)][1]
    assert not refused.allowed and refused.remaining == 0 and refused.reset_s == 5  # the hit at 0 leaves at 10
    now[0] = 10.5
    assert windows.hit(item, a).allowed  # the hit at 0 left the window
    now[0] = 15.0
    assert windows.hit(item, b).allowed
    now[0] = 20.6  # a sweep is due (every 10 s): a's last hit (at 10.5) left its window, b's (at 15) not
    windows.hit(item, ("ip", "tts", "c"))
    assert len(windows) == 2


async def test_two_limiters_on_one_redis_share_the_count(redis_url: str) -> None:
    """What two facade replicas do: each counts against the same window."""
    Redis.from_url(redis_url).flushdb()
    one, two = RateLimiter(RedisConnection(redis_url)), RateLimiter(RedisConnection(redis_url))
    item = parse_limit("2/minute")
    assert (await one.hit(item, "ip", "chat", "198.51.100.1")).allowed
    assert (await two.hit(item, "ip", "chat", "198.51.100.1")).allowed
    refused = await one.hit(item, "ip", "chat", "198.51.100.1")
    assert not refused.allowed and refused.remaining == 0 and 0 < refused.reset_s <= 60


def test_tightest_reports_the_refused_or_the_lowest_remaining() -> None:
    roomy = LimitState(True, 100, 90, 10, 60)
    tight = LimitState(True, 5, 1, 30, 60)
    refused = LimitState(False, 3, 0, 2, 2)
    assert tightest([roomy, tight]) is tight
    assert tightest([roomy, refused, tight]) is refused
    assert tight.headers() == {
        "RateLimit-Limit": "5", "RateLimit-Remaining": "1", "RateLimit-Reset": "30", "RateLimit-Policy": "5;w=60",
    }  # fmt: skip
