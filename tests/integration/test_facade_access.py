"""API tokens and rate limits end to end: two facade processes sharing one real Redis.

Tokens are made with the CLI and the admin routes; every check is made on both replicas,
so a rotation or a revocation on one is seen by the other on its next request.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis import Redis

from loadtests.processes import tokens_cli
from tests.conftest import TritonHost, facade_client, facade_process, free_port, metric_value, raw_request

pytestmark = pytest.mark.integration

TIERS = {
    "premium": {"priority": 1, "queue_timeout_s": 60, "limits": {"default": "1000/minute"}},
    "standard": {"priority": 2, "queue_timeout_s": 30, "limits": {"default": "1000/minute"}},
    "tiny": {"priority": 2, "queue_timeout_s": 30, "limits": {"default": "3/2 seconds"}},
}
HELLO = {"text": "Manao ahoana", "source": "mg", "target": "fr"}  # a phrasebook entry: no model time


@dataclass(frozen=True)
class Replicas:
    a: str
    b: str
    env: dict[str, str]
    redis_url: str
    logs: tuple[Path, Path]


@pytest.fixture(scope="module")
def replicas(triton_host: TritonHost, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    # A database of its own, so the test can read every key the facade wrote.
    url = redis_url.rsplit("/", 1)[0] + "/3"
    Redis.from_url(url).flushdb()
    env = {
        "MILO_AUTH_ENABLED": "true",
        "MILO_REDIS_URL": url,
        "MILO_TIERS": json.dumps(TIERS),
        "MILO_IP_RATE_LIMIT": "10000/minute",
        "MILO_TOKEN_ROTATION_GRACE_S": "3",
    }
    logs = tmp_path_factory.mktemp("facades")
    log_a, log_b = logs / "a.log", logs / "b.log"
    with facade_process(triton_host, log_a, **env) as a, facade_process(triton_host, log_b, **env) as b:
        yield Replicas(a, b, env, url, (log_a, log_b))


def cli(replicas: Replicas, *args: str) -> str:
    return tokens_cli(replicas.env, *args)


def translate(base: str, token: str | None, **headers: str) -> httpx.Response:
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{base}/v1/translate", json=HELLO, headers=headers, timeout=30)


def test_health_readiness_and_metrics_stay_open(replicas: Replicas) -> None:
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(replicas.a + path, timeout=30).status_code == 200


def test_missing_and_bad_tokens_get_401_missing_scopes_403(replicas: Replicas) -> None:
    tts_only = cli(replicas, "create", "tts-only", "--scopes", "tts")
    missing = translate(replicas.a, None)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthenticated"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    prefix, key_id, _ = tts_only.split("_", 2)
    for bad in ("garbage", f"{prefix}_{key_id}_{'A' * 43}", tts_only[:-1]):
        response = translate(replicas.b, bad)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_token"
    basic = httpx.post(f"{replicas.a}/v1/translate", json=HELLO, headers={"Authorization": "Basic abc"})
    assert basic.status_code == 401

    forbidden = translate(replicas.a, tts_only)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "insufficient_scope"
    assert "translate" in forbidden.json()["error"]["message"]
    admin = httpx.get(f"{replicas.b}/v1/admin/tokens", headers={"Authorization": f"Bearer {tts_only}"})
    assert admin.status_code == 403
    # A valid token that lacks the scope is not a bad token: 403, and the body says which scope.
    assert (
        httpx.post(f"{replicas.a}/v1/tts", headers={"Authorization": f"Bearer {tts_only}"}, json={}).status_code == 422
    )


def test_token_create_use_rotate_and_revoke_across_replicas(replicas: Replicas) -> None:
    old = cli(replicas, "create", "mobile", "--tier", "standard", "--scopes", "translate,chat")
    assert translate(replicas.a, old).status_code == 200
    assert translate(replicas.b, old).status_code == 200

    new = cli(replicas, "rotate", "mobile", "--grace", "3")
    rotated_at = time.monotonic()
    assert new != old
    for base in (replicas.a, replicas.b):
        assert translate(base, new).status_code == 200
        assert translate(base, old).status_code == 200, "the old secret must work during the grace period"
    time.sleep(max(0.0, 3.2 - (time.monotonic() - rotated_at)))
    for base in (replicas.a, replicas.b):
        expired = translate(base, old)
        assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
        assert translate(base, new).status_code == 200

    # The same operations over REST, with an admin token; each replica sees the other's change.
    admin = {"Authorization": f"Bearer {cli(replicas, 'create', 'ops', '--tier', 'premium', '--scopes', 'admin')}"}
    created = httpx.post(
        f"{replicas.b}/v1/admin/tokens", headers=admin,
        json={"name": "web", "tier": "premium", "scopes": ["translate"]},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    web = created.json()["token"]
    assert translate(replicas.a, web).status_code == 200
    listed = httpx.get(f"{replicas.a}/v1/admin/tokens", headers=admin).json()
    assert {"mobile", "web", "ops", "tts-only"} <= {t["name"] for t in listed}
    assert all("token" not in t and "hash" not in t and "salt" not in t for t in listed)
    duplicate = httpx.post(f"{replicas.a}/v1/admin/tokens", headers=admin, json={"name": "web", "scopes": ["tts"]})
    assert duplicate.status_code == 409

    rotated = httpx.post(f"{replicas.a}/v1/admin/tokens/web/rotate", headers=admin, json={"grace_s": 0})
    assert rotated.status_code == 200
    web2 = rotated.json()["token"]
    assert translate(replicas.b, web).status_code == 401
    assert translate(replicas.b, web2).status_code == 200

    assert httpx.delete(f"{replicas.a}/v1/admin/tokens/web", headers=admin).status_code == 204
    assert translate(replicas.b, web2).status_code == 401, "a revocation on A holds on B's next request"
    assert httpx.delete(f"{replicas.b}/v1/admin/tokens/web", headers=admin).status_code == 404
    cli(replicas, "revoke", "mobile")
    assert translate(replicas.a, new).status_code == 401

    # Only salted hashes reached the store, and no token reached the logs.
    redis = Redis.from_url(replicas.redis_url, decode_responses=True)
    stored = json.dumps(
        {k: redis.hgetall(k) if redis.type(k) == "hash" else redis.get(k) for k in redis.keys("milo:token*")}
    )
    assert "hash" in stored and "salt" in stored
    logs = "".join(path.read_text() for path in replicas.logs)
    for token in (old, new, web, web2):
        secret = token.split("_", 2)[2]
        assert secret not in stored
        assert secret not in logs


def test_429_after_the_limit_with_headers_shared_by_replicas_then_reset(replicas: Replicas) -> None:
    token = cli(replicas, "create", "small", "--tier", "tiny", "--scopes", "translate")
    first = [translate(base, token) for base in (replicas.a, replicas.b, replicas.a)]
    assert [r.status_code for r in first] == [200, 200, 200]
    assert [r.headers["RateLimit-Remaining"] for r in first] == ["2", "1", "0"]
    assert all(r.headers["RateLimit-Limit"] == "3" and r.headers["RateLimit-Policy"] == "3;w=2" for r in first)

    refused = translate(replicas.b, token)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 2
    assert refused.headers["RateLimit-Remaining"] == "0" and refused.headers["RateLimit-Limit"] == "3"
    assert 0 <= int(refused.headers["RateLimit-Reset"]) <= 2

    time.sleep(retry_after + 0.2)
    assert translate(replicas.a, token).status_code == 200


def test_client_ip_limit_believes_only_trusted_proxies(triton_host: TritonHost) -> None:
    env = {"MILO_IP_RATE_LIMIT": "2/minute", "MILO_TRUSTED_PROXIES": '["127.0.0.1"]'}
    with facade_client(triton_host.http_url, triton_host.grpc_url, peer=("127.0.0.1", 5000), **env) as client:
        alice, bob = {"X-Forwarded-For": "198.51.100.1"}, {"X-Forwarded-For": "198.51.100.2"}
        assert [client.post("/v1/translate", json=HELLO, headers=alice).status_code for _ in range(3)] == [
            200,
            200,
            429,
        ]
        assert client.post("/v1/translate", json=HELLO, headers=bob).status_code == 200
        # Another route family has its own window.
        assert client.get("/v1/models", headers=alice).status_code == 200
    with facade_client(triton_host.http_url, triton_host.grpc_url, peer=("203.0.113.9", 5000), **env) as client:
        # Not a trusted proxy: its X-Forwarded-For is ignored, every call counts against 203.0.113.9.
        codes = [client.post("/v1/translate", json=HELLO, headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code
                 for i in range(3)]  # fmt: skip
        assert codes == [200, 200, 429]


def test_auth_off_means_anonymous_standard_tier_without_admin(
    triton_host: TritonHost, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), facade_client(triton_host.http_url, triton_host.grpc_url) as client:
        assert client.post("/v1/translate", json=HELLO).status_code == 200
        admin = client.get("/v1/admin/tokens")
        assert admin.status_code == 403 and "MILO_AUTH_ENABLED=true" in admin.json()["error"]["message"]
    assert "milo-voice tokens create" in caplog.text, "the quick start says how to turn tokens on"


def test_metrics_can_move_to_their_own_port(triton_host: TritonHost) -> None:
    port = free_port()
    with facade_client(triton_host.http_url, triton_host.grpc_url, MILO_METRICS_PORT=str(port)) as client:
        assert client.post("/v1/translate", json=HELLO).status_code == 200
        assert client.get("/metrics").status_code == 404
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert scraped.status_code == 200 and "milo_http_request_duration_seconds" in scraped.text


def test_the_realtime_handshake_is_checked_like_a_rest_call(replicas: Replicas) -> None:
    """A browser offers its token as a subprotocol beside "realtime"; a refused handshake gets the
    HTTP status and error body a REST call would."""
    import asyncio

    import websockets

    voice = cli(replicas, "create", "voice-app", "--scopes", "stt,chat,tts")
    chat_only = cli(replicas, "create", "chat-app", "--scopes", "chat")
    url = replicas.a.replace("http://", "ws://") + "/v1/realtime"

    async def refused(**options: object) -> tuple[int, dict[str, object]]:
        with pytest.raises(websockets.InvalidStatus) as raised:
            async with websockets.connect(url, **options):  # type: ignore[arg-type]
                pass
        response = raised.value.response
        return response.status_code, json.loads(response.body or b"{}")

    async def accepted(**options: object) -> dict[str, object]:
        async with websockets.connect(url, **options) as connection:  # type: ignore[arg-type]
            assert connection.subprotocol == "realtime"
            return json.loads(await connection.recv())  # type: ignore[no-any-return]

    status, body = asyncio.run(refused())
    assert status == 401 and body["error"]["code"] == "unauthenticated"  # type: ignore[index]
    status, body = asyncio.run(refused(subprotocols=["realtime", f"bearer.{chat_only}"]))
    assert status == 403 and "'stt'" in body["error"]["message"]  # type: ignore[index]
    assert asyncio.run(accepted(subprotocols=["realtime", f"bearer.{voice}"]))["type"] == "session.created"
    header = {"Authorization": f"Bearer {voice}"}
    assert asyncio.run(accepted(subprotocols=["realtime"], additional_headers=header))["type"] == "session.created"


def test_a_session_belongs_to_the_token_that_made_it(replicas: Replicas) -> None:
    alice = {"Authorization": f"Bearer {cli(replicas, 'create', 'alice', '--scopes', 'chat')}"}
    mallory = {"Authorization": f"Bearer {cli(replicas, 'create', 'mallory', '--scopes', 'chat')}"}

    def say(base: str, headers: dict[str, str], session_id: str | None = None) -> dict[str, object]:
        body = {
            "message": "Salama",
            "max_tokens": 4,
            "temperature": 0,
            **({"session_id": session_id} if session_id else {}),
        }
        response = httpx.post(f"{base}/v1/chat", json=body, headers=headers, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    chosen = say(replicas.a, alice, "alice-notes")
    issued = say(replicas.a, alice)
    assert chosen["session_id"] == "alice-notes" and chosen["turns"] == 2
    assert len(str(issued["session_id"])) == 32  # the server's own id: 122 random bits
    for base in (replicas.a, replicas.b):
        for session_id in ("alice-notes", issued["session_id"]):
            seen = httpx.get(f"{base}/v1/chat/sessions/{session_id}", headers=mallory, timeout=30)
            assert seen.status_code == 404 and seen.json()["error"]["code"] == "session_not_found"
            gone = httpx.delete(f"{base}/v1/chat/sessions/{session_id}", headers=mallory, timeout=30)
            assert gone.status_code == 404
    # The same id chosen by another token is another session, in that token's namespace.
    assert say(replicas.b, mallory, "alice-notes")["turns"] == 2
    assert say(replicas.b, mallory, "alice-notes")["turns"] == 4
    for base in (replicas.a, replicas.b):
        mine = httpx.get(f"{base}/v1/chat/sessions/alice-notes", headers=alice, timeout=30).json()
        assert [t["role"] for t in mine["turns"]] == ["user", "assistant"]
    # Stored under a hash of the owner: no token's name in the store's keys.
    keys = [
        k.decode().removeprefix("milo:session:") for k in Redis.from_url(replicas.redis_url).scan_iter("milo:session:*")
    ]
    owners = {key.split(":")[0] for key in keys}
    assert len(owners) == 2 and all(re.fullmatch(r"[0-9a-f]{24}", owner) for owner in owners)
    assert sorted(key.split(":")[1] for key in keys).count("alice-notes") == 2
    assert httpx.delete(f"{replicas.b}/v1/chat/sessions/alice-notes", headers=alice, timeout=30).status_code == 204


def test_a_forwarded_header_from_an_untrusted_peer_changes_no_address(triton_host: TritonHost, tmp_path: Path) -> None:
    """Through the real server (``python -m api_facade``): uvicorn's own default would believe
    X-Forwarded-For from 127.0.0.1 and give each spoofed address a fresh budget."""
    env = {"MILO_IP_RATE_LIMIT": "2/minute"}
    with facade_process(triton_host, tmp_path / "facade.log", **env) as base:
        codes = [translate(base, None, **{"X-Forwarded-For": f"10.0.0.{i}"}).status_code for i in range(3)]
    assert codes == [200, 200, 429]


def test_bad_tokens_from_an_address_never_spend_a_valid_tokens_budget(
    replicas: Replicas, triton_host: TritonHost, tmp_path: Path
) -> None:
    valid = cli(replicas, "create", "neighbour", "--tier", "premium", "--scopes", "translate")
    env = {**replicas.env, "MILO_IP_RATE_LIMIT": "3/minute"}
    with facade_process(triton_host, tmp_path / "facade.log", **env) as base:
        guesses = [translate(base, "guessed-token").status_code for _ in range(5)]
        assert guesses == [401, 401, 401, 429, 429]  # guessing is throttled per address
        assert [translate(base, valid).status_code for _ in range(5)] == [200] * 5


def test_a_token_in_a_query_string_is_refused_and_not_logged(triton_host: TritonHost, tmp_path: Path) -> None:
    log = tmp_path / "facade.log"
    with facade_process(triton_host, log, MILO_AUTH_ENABLED="true") as base:
        refused = httpx.get(f"{base}/v1/models?token=milo_abc.s3cr3t-value&limit=5", timeout=30)
        assert refused.status_code == 401
    written = log.read_text()
    assert "GET /v1/models?token=***&limit=5" in written and "s3cr3t-value" not in written


def test_a_body_is_not_read_before_its_token_is_checked(replicas: Replicas) -> None:
    """A JSON route's body would be read and parsed before a route dependency runs: the token is
    checked first, so a caller without one gets its 401 while its declared body is still unsent
    (else the facade would wait for it, up to its body deadline). The refusal is measured and
    carries its request id like any answer."""
    count = "milo_http_request_duration_seconds_count"
    labels = {"route": "/v1/translate", "method": "POST", "status": "401"}
    before = metric_value(replicas.a, count, **labels)
    head = (
        "POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "X-Request-ID: no-token-probe\r\nContent-Length: 900000\r\n\r\n"
    )
    status, body, seconds = raw_request(replicas.a, head, [], 0)
    assert status == 401 and body["error"]["code"] == "unauthenticated" and seconds < 2
    assert body["request_id"] == "no-token-probe"
    assert metric_value(replicas.a, count, **labels) == before + 1
