"""POST /v1/chat and its sessions end to end: facade in process, real PyTriton host, real Redis."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager

import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from api_facade.sessions import MemorySessionStore, Turn, trim_to_budget
from tests.conftest import TritonHost, facade_client

pytestmark = pytest.mark.integration


def facade(triton_host: TritonHost, **env: str) -> AbstractContextManager[TestClient]:
    return facade_client(triton_host.http_url, triton_host.grpc_url, **env)


@pytest.fixture
def api(triton_host: TritonHost) -> Iterator[TestClient]:
    with facade(triton_host) as client:
        yield client


def say(api: TestClient, message: str, **extra: object) -> dict[str, object]:
    response = api.post("/v1/chat", json={"message": message, "max_tokens": 16, "temperature": 0.0, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def test_text_reply_creates_a_session(api: TestClient) -> None:
    answer = say(api, "Bonjour, comment vas-tu ?")
    assert answer["reply"] and answer["session_id"] and answer["turns"] == 2
    assert "audio" not in answer
    session = api.get(f"/v1/chat/sessions/{answer['session_id']}").json()
    assert [t["role"] for t in session["turns"]] == ["user", "assistant"]


def test_memory_is_kept_across_ten_turns(api: TestClient) -> None:
    first = say(api, "My name is Rakoto.")
    session_id = first["session_id"]
    prompt_tokens = [first["prompt_tokens"]]
    for turn in range(9):
        prompt_tokens.append(say(api, f"Tell me fact number {turn}.", session_id=session_id)["prompt_tokens"])
    turns = api.get(f"/v1/chat/sessions/{session_id}").json()["turns"]
    assert len(turns) == 20
    assert turns[0]["content"] == "My name is Rakoto."
    # The whole history reaches the model: its prompt grows with every turn.
    assert prompt_tokens == sorted(prompt_tokens) and prompt_tokens[-1] > prompt_tokens[0] + 100


def test_small_context_trims_what_is_sent_not_what_is_stored(triton_host: TritonHost) -> None:
    with facade(triton_host, MILO_CHAT_N_CTX="400") as small:
        session_id = say(small, "First message " * 20)["session_id"]
        sent = [say(small, "More words here " * 10, session_id=session_id)["prompt_tokens"] for _ in range(6)]
        stored = small.get(f"/v1/chat/sessions/{session_id}").json()["turns"]
    assert len(stored) == 14
    assert max(sent) < 400


def test_voice_mode_returns_spoken_reply(api: TestClient) -> None:
    answer = say(api, "Salama", mode="voice", language="mg", voice_format="wav")
    audio = answer["audio"]
    assert audio["format"] == "wav" and audio["sample_rate"] == 16000
    samples, rate = sf.read(io.BytesIO(base64.b64decode(audio["data"])))
    assert samples.size / rate == pytest.approx(audio["duration"], abs=0.01)
    assert audio["duration"] > 0.2


def sse_events(text: str) -> list[tuple[str, dict[str, object]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_a_voice_stream_sends_tokens_and_each_pieces_audio_then_done(api: TestClient) -> None:
    """The order of the events; that the audio streams while the reply is written is shown over a
    real connection in test_streaming."""
    body = {"message": "Bonjour", "stream": True, "mode": "voice", "language": "fr", "max_tokens": 40}
    with api.stream("POST", "/v1/chat", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.read().decode())
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "session" and kinds[-1] == "done"
    assert kinds.index("token") < kinds.index("audio")
    reply = "".join(str(data["text"]) for kind, data in events if kind == "token").strip()
    assert events[-1][1]["reply"] == reply
    audio = [data for kind, data in events if kind == "audio"]
    assert [a["index"] for a in audio] == list(range(len(audio))) and {a["language"] for a in audio} == {"fr"}
    assert " ".join(str(a["text"]) for a in audio).split() == reply.split()
    session = api.get(f"/v1/chat/sessions/{events[0][1]['session_id']}").json()
    assert session["turns"][-1]["content"] == reply


def test_sessions_survive_a_facade_restart_with_redis(triton_host: TritonHost, redis_url: str) -> None:
    with facade(triton_host, MILO_REDIS_URL=redis_url) as first:
        session_id = say(first, "Remember me.")["session_id"]
    with facade(triton_host, MILO_REDIS_URL=redis_url) as restarted:
        answer = say(restarted, "Still there?", session_id=session_id)
        assert answer["turns"] == 4
        assert restarted.delete(f"/v1/chat/sessions/{session_id}").status_code == 204
        assert restarted.get(f"/v1/chat/sessions/{session_id}").status_code == 404


def test_sessions_expire_in_redis(triton_host: TritonHost, redis_url: str) -> None:
    with facade(triton_host, MILO_REDIS_URL=redis_url, MILO_SESSION_TTL_S="1") as api:
        session_id = say(api, "Short lived.")["session_id"]
        assert api.get(f"/v1/chat/sessions/{session_id}").status_code == 200
        time.sleep(2.2)
        assert api.get(f"/v1/chat/sessions/{session_id}").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": ""}, "message"),
        ({"message": " \n "}, "message"),
        ({"message": "hi", "mode": "video"}, "mode"),
        ({"message": "hi", "backend": "mars"}, "backend"),
        ({"message": "hi", "backend": "local", "voice_format": "aiff"}, "voice_format"),
        ({"message": "hi", "session_id": "bad id!"}, "session_id"),
        ({"message": "hi", "language": "de"}, "language"),
        ({"message": "hi", "max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_input(api: TestClient, body: dict[str, object], field: str) -> None:
    response = api.post("/v1/chat", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field


def test_cloud_backend_through_triton(api: TestClient) -> None:
    """backend=cloud: Triton's chat_cloud model, which speaks to a real OpenAI-compatible server."""
    answer = say(api, "Say hello.", backend="cloud")
    assert answer["reply"] and answer["completion_tokens"] > 0
    follow_up = say(api, "Again.", backend="cloud", session_id=answer["session_id"])
    assert follow_up["turns"] == 4 and follow_up["prompt_tokens"] > answer["prompt_tokens"]
    body = {"message": "Bonjour", "backend": "cloud", "stream": True, "max_tokens": 8}
    with api.stream("POST", "/v1/chat", json=body) as response:
        events = sse_events(response.read().decode())
    assert [k for k, _ in events][-1] == "done" and any(k == "token" for k, _ in events)


def test_unknown_session_is_404(api: TestClient) -> None:
    assert api.get("/v1/chat/sessions/nope").json()["error"]["code"] == "session_not_found"
    assert api.delete("/v1/chat/sessions/nope").status_code == 404


def test_memory_store_ttl_and_trimming() -> None:
    now = [0.0]
    store = MemorySessionStore(ttl_s=10, clock=lambda: now[0])

    async def scenario() -> None:
        await store.append("a", [Turn("user", "hi")])
        now[0] = 9
        assert await store.load("a") == [Turn("user", "hi")]
        now[0] = 20
        assert await store.load("a") is None

    import asyncio

    asyncio.run(scenario())
    turns = [Turn("user", "x" * 300) for _ in range(10)] + [Turn("user", "last")]
    kept = trim_to_budget(turns, 250)
    assert kept[-1].content == "last" and 1 < len(kept) < len(turns)
