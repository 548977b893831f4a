"""The facade's route logic on a scripted transport: no Triton server, the real contract codec.

``create_app`` takes the Triton client it calls; here a ``TritonPool`` whose transport answers
each model from a function of its request record (packed and unpacked by ``contract.codec`` as
on the wire), and records what each route sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api_facade.main import create_app
from api_facade.settings import Settings
from client import CallOptions, TritonPool
from client.calls import ModelCalls
from contract import codec, tensors
from contract.records import ChatDelta, ChatReply, ChatRequest, InputError, Speech, Translation


class ScriptedTriton(TritonPool):
    """Answers ``model -> function(request record)``; a stream's function returns its pieces."""

    def __init__(self, answers: dict[str, Callable[[Any], Any]]) -> None:
        ModelCalls.__init__(self)
        self.endpoints = []
        self.answers = answers
        self.sent: list[tuple[str, Any, CallOptions]] = []

    async def is_model_ready(self, model: str) -> bool:
        return True

    async def close(self) -> None:
        await self.wait_background()

    async def infer_tensors(self, io: tensors.ModelIO, inputs: codec.Arrays, options: CallOptions) -> codec.Arrays:
        (request,) = codec.unpack_requests(io, inputs)
        self.sent.append((io.name, request, options))
        return codec.pack_results(io, [self.answers[io.name](request)])

    async def stream_tensors(
        self, io: tensors.ModelIO, inputs: codec.Arrays, options: CallOptions
    ) -> AsyncIterator[codec.Arrays]:
        (request,) = codec.unpack_requests(io, inputs)
        self.sent.append((io.name, request, options))
        for piece in self.answers[io.name](request):
            yield codec.pack_piece(io, piece)


def echo_reply(request: ChatRequest) -> ChatReply:
    return ChatReply(f"heard {len(request.messages)}", 3, 40, "length", trimmed_messages=0, cached_tokens=32)


def speech(request: Any) -> Speech:
    return Speech(np.zeros(1600, dtype=np.float32), 16000, request.text)


@pytest.fixture
def scripted() -> ScriptedTriton:
    return ScriptedTriton(
        {
            "chat": echo_reply,
            "chat_stream": lambda r: [ChatDelta("Sa"), ChatDelta("lama", "stop")],
            "tts": speech,
            "translate": lambda r: (
                Translation(f"<{r.text}>", -0.1, "sha256:r7") if r.text != "refuse" else InputError("no way")
            ),
        }
    )


@pytest.fixture
def api(scripted: ScriptedTriton) -> Iterator[TestClient]:
    settings = Settings(triton_url="scripted:0", redis_url=None, chat_n_ctx=600)
    with TestClient(create_app(settings, triton=scripted)) as client:
        yield client


def test_a_chat_turn_sends_the_history_that_fits_and_stores_the_whole_session(
    api: TestClient, scripted: ScriptedTriton
) -> None:
    session_id = ""
    for i in range(6):
        body = {"message": f"message {i} " + "words " * 60, **({"session_id": session_id} if session_id else {})}
        answer = api.post("/v1/chat", json=body).json()
        session_id = answer["session_id"]
    requests = [request for name, request, _ in scripted.sent if name == "chat"]
    assert [len(r.messages) for r in requests[:3]] == [1, 3, 5]
    assert len(requests[-1].messages) < 11 and requests[-1].messages[-1].content.startswith("message 5")
    # Left out by the caller, the sampling is left to the model (its registry defaults), not set here.
    assert requests[-1].max_tokens is None and requests[-1].temperature is None
    assert answer["turns"] == 12 and len(api.get(f"/v1/chat/sessions/{session_id}").json()["turns"]) == 12


def test_voice_mode_speaks_the_reply_in_the_asked_language(api: TestClient, scripted: ScriptedTriton) -> None:
    answer = api.post("/v1/chat", json={"message": "Bonjour", "mode": "voice", "language": "fr"}).json()
    (tts,) = [request for name, request, _ in scripted.sent if name == "tts"]
    assert tts.language == "fr" and tts.text == answer["reply"] and answer["audio"]["duration"] == 0.1


def test_chat_completions_keep_the_system_prompt_and_report_cached_tokens(
    api: TestClient, scripted: ScriptedTriton
) -> None:
    messages = [{"role": "system", "content": "Be brief."}]
    messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": "words " * 80} for i in range(9)]
    body = {"model": "milo-chat", "messages": messages, "max_tokens": 5, "stop": "\n", "seed": 3}
    completion = api.post("/v1/chat/completions", json=body).json()
    (request,) = [request for name, request, _ in scripted.sent if name == "chat"]
    assert request.messages[0].content == "Be brief." and len(request.messages) < len(messages)
    assert (request.max_tokens, request.stop, request.seed) == (5, ("\n",), 3)
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["prompt_tokens_details"] == {"cached_tokens": 32}


def test_a_streamed_completion_ends_with_the_models_finish_reason(api: TestClient) -> None:
    body = {"messages": [{"role": "user", "content": "Salama"}], "stream": True}
    lines = [line for line in api.post("/v1/chat/completions", json=body).text.splitlines() if line]
    assert lines[-1] == "data: [DONE]" and '"finish_reason":"stop"' in lines[-2]
    assert "".join(line.split('"content":"')[1].split('"')[0] for line in lines[1:-2]) == "Salama"


def test_translations_come_from_the_phrasebook_the_model_then_the_cache_and_refusals_are_422(
    api: TestClient, scripted: ScriptedTriton
) -> None:
    assert api.post("/v1/translate", json={"text": "Veloma", "source": "mg", "target": "fr"}).json()["translations"][
        0
    ] == {"text": "Au revoir", "origin": "phrasebook"}
    body = {"text": "Trano fotsy", "source": "mg", "target": "fr"}
    first, again = (api.post("/v1/translate", json=body).json() for _ in range(2))
    assert first["translations"][0] == {"text": "<Trano fotsy>", "origin": "model"}
    assert again["translations"][0]["origin"] == "cache"
    assert len([name for name, *_ in scripted.sent if name == "translate"]) == 1
    refused = api.post("/v1/translate", json={**body, "text": "refuse"})
    assert refused.status_code == 422 and refused.json()["error"] == {"code": "invalid_input", "message": "no way"}


def test_new_weights_never_answer_from_older_weights_translations(api: TestClient, scripted: ScriptedTriton) -> None:
    body = {"text": "Trano mena", "source": "mg", "target": "fr"}

    def origins() -> list[str]:
        return [api.post("/v1/translate", json=body).json()["translations"][0]["origin"] for _ in range(2)]

    assert origins() == ["model", "cache"]
    assert api.get("/ready").json()["weights"] == {"translate": "sha256:r7"}
    # The server comes back with fine-tuned weights: the cache is not read until the model has said
    # which weights it runs, and what the old weights wrote is never read again.
    scripted.answers["translate"] = lambda r: Translation(f"[{r.text}]", -0.1, "sha256:tuned")
    scripted.restarts += 1
    assert origins() == ["model", "cache"]
    answer = api.post("/v1/translate", json=body).json()["translations"][0]
    assert answer == {"text": "[Trano mena]", "origin": "cache"}
    assert api.get("/ready").json()["weights"] == {"translate": "sha256:tuned"}
    metrics = api.get("/metrics").text
    assert 'milo_served_weights_info{model="translate",revision="sha256:tuned"} 1.0' in metrics
    assert 'milo_served_weights_info{model="translate",revision="sha256:r7"} 0.0' in metrics
    # Weights that do not say what they are: every translation comes from the model.
    scripted.answers["translate"] = lambda r: Translation(f"({r.text})", -0.1)
    scripted.restarts += 1
    assert origins() == ["model", "model"]


def test_the_callers_tier_sets_the_triton_priority(api: TestClient, scripted: ScriptedTriton) -> None:
    api.post("/v1/tts", json={"text": "Salama", "language": "mg"})
    (_, _, options) = scripted.sent[-1]
    standard = Settings(triton_url="scripted:0").tier("standard")
    assert options.priority == standard.priority and options.queue_timeout_us == standard.queue_timeout_s * 1e6


def test_later_pieces_of_speech_are_scheduled_after_every_first_piece(
    api: TestClient, scripted: ScriptedTriton
) -> None:
    """A streamed text's first piece at the tier's priority, the rest two levels later (the TTS
    model's levels 3 and 4), in a spoken reply as in a streamed /v1/tts."""
    standard = Settings(triton_url="scripted:0").tier("standard").priority
    text = "Manao ahoana. Tonga soa eto. Misaotra betsaka. Veloma."
    streamed = api.post("/v1/tts", json={"text": text, "language": "mg", "stream": True, "format": "pcm"})
    assert streamed.status_code == 200
    pieces = [(request.text, options.priority) for model, request, options in scripted.sent if model == "tts"]
    assert len(pieces) >= 2
    assert pieces[0][1] == standard and {priority for _, priority in pieces[1:]} == {standard + 2}
    assert " ".join(piece for piece, _ in pieces).split() == text.split()


def test_sessions_are_kept_per_owner_and_older_unowned_ones_are_claimed_once() -> None:
    import asyncio

    from api_facade.conversation import Conversations
    from api_facade.sessions import MemorySessionStore, Turn

    store = MemorySessionStore(ttl_s=600)
    book = Conversations(store, Settings(triton_url="scripted:0", redis_url=None))
    here, there = book.owned_by("client:10.0.0.1"), book.owned_by("client:10.0.0.2")

    async def run() -> None:
        turn = await here.turn("notes", "Salama")
        assert await here.answered(turn, "Salama tompoko") == 2
        assert await there.history("notes") is None and not await there.forget("notes")
        assert [t.content for t in await here.history("notes") or []] == ["Salama", "Salama tompoko"]
        # The same id from another owner starts that owner's own session.
        assert (await there.turn("notes", "Bonjour")).stored_turns == 0
        # A session stored before sessions had owners: the first caller to name it gets it, alone.
        await store.append("older", [Turn("user", "Manahoana"), Turn("assistant", "Tsara")])
        assert [t.content for t in await there.history("older") or []] == ["Manahoana", "Tsara"]
        assert await store.load("older") is None and await here.history("older") is None
        assert len(await there.history("older") or []) == 2

    asyncio.run(run())
    with pytest.raises(RuntimeError, match="owned_by"):
        book.key("notes")


def test_errors_tell_the_client_what_to_do_and_keep_internals_for_the_log(
    api: TestClient, scripted: ScriptedTriton, caplog: pytest.LogCaptureFixture
) -> None:
    from client import TritonUnavailableError

    def unreachable(request: Any) -> Any:
        raise TritonUnavailableError("cannot connect to 10.1.2.3:8001: aiohttp.ClientConnectorError(refused)")

    scripted.answers["translate"] = unreachable
    with caplog.at_level("INFO", logger="api_facade"):
        response = api.post(
            "/v1/translate", json={"text": "Fehezanteny vaovao tanteraka ity.", "source": "mg", "target": "fr"}
        )
    body = response.json()
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert body["error"] == {
        "code": "model_unavailable",
        "message": "the model server cannot take this request now; retry shortly",
    }
    assert "10.1.2.3" not in response.text and "aiohttp" not in response.text
    # The log line of the same request id has what went wrong inside.
    (line,) = [r.getMessage() for r in caplog.records if body["request_id"] in r.getMessage()]
    assert "10.1.2.3:8001" in line and "ClientConnectorError" in line


def test_405_names_the_allowed_methods_and_head_answers_where_get_does(api: TestClient) -> None:
    wrong = api.put("/v1/tts", json={})
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    for path in ("/health", "/ready"):
        head = api.head(path)
        assert head.status_code == 200 and head.content == b""


def test_secrets_in_a_request_line_are_redacted_for_the_access_log() -> None:
    from api_facade.access_log import redacted

    assert redacted("/v1/models?token=abc.def&limit=5") == "/v1/models?token=***&limit=5"
    assert redacted("/v1/tts?api_key=zz&Access_Token=yy") == "/v1/tts?api_key=***&Access_Token=***"
    assert redacted("/v1/translate?text=keyboard") == "/v1/translate?text=keyboard"


def test_a_body_that_is_not_json_gets_400_and_one_sent_as_something_else_415(api: TestClient) -> None:
    broken = api.post(
        "/v1/translate", content=b'{"text": "Salama", "source": ', headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    assert broken.json()["error"]["message"].startswith("the body is not valid JSON: ") and "character" in broken.text
    latin1 = api.post(
        "/v1/translate", content='{"text": "été"}'.encode("latin-1"), headers={"Content-Type": "application/json"}
    )
    assert latin1.status_code == 400 and latin1.json()["error"]["code"] == "invalid_json"
    plain = api.post("/v1/translate", content=b"Salama", headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415 and "application/json" in plain.json()["error"]["message"]
    # A well-formed body with a bad field still names the field.
    field = api.post("/v1/translate", json={"text": "Salama", "source": "xx", "target": "fr"})
    assert field.status_code == 422 and field.json()["error"]["field"] == "source"


def test_the_schema_declares_the_errors_each_route_answers_in_their_real_shape(api: TestClient) -> None:
    """Every /v1/ operation takes the bearer scheme and lists its error statuses in the shape the
    facade sends (OpenAI's on the OpenAI routes), never FastAPI's own 422 body; and real error
    answers of both kinds validate against the schema they are declared with."""
    import json

    import jsonschema

    from api_facade.openai_protocol import OPENAI_PATHS

    document = api.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearer"]["description"],
    }
    assert "HTTPValidationError" not in json.dumps(document)
    for path, operations in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            assert operation["security"] == [{"bearer": []}], (method, path)
            shape = "OpenAIError" if path.startswith(OPENAI_PATHS) else "ErrorResponse"
            statuses = {"401", "403", "429"} | ({"400", "413", "415", "422"} if method == "post" else set())
            for status in statuses:
                content = operation["responses"][status]["content"]["application/json"]
                assert content["schema"] == {"$ref": f"#/components/schemas/{shape}"}, (method, path, status)

    def valid(body: dict[str, Any], shape: str) -> None:
        jsonschema.validate(body, {"$ref": f"#/components/schemas/{shape}", "components": document["components"]})

    refused = api.post("/v1/translate", json={"text": "", "source": "mg", "target": "xx"})
    assert refused.status_code == 422
    valid(refused.json(), "ErrorResponse")
    too_large = api.post("/v1/translate", content=b"x" * 2_000_000, headers={"Content-Type": "application/json"})
    assert too_large.status_code == 413
    valid(too_large.json(), "ErrorResponse")
    openai = api.post("/v1/chat/completions", json={"messages": [], "n": 2})
    assert openai.status_code in (400, 422)
    valid(openai.json(), "OpenAIError")


def test_a_token_store_that_cannot_be_reached_is_a_503_before_the_body_is_read(scripted: ScriptedTriton) -> None:
    """Tokens fail closed when their store is away, also where the token is checked first."""
    from api_facade.redis_connection import RedisUnavailableError

    async def away(token: str) -> None:
        raise RedisUnavailableError("tokens")

    settings = Settings(triton_url="scripted:0", redis_url=None, auth_enabled=True)
    with TestClient(create_app(settings, triton=scripted)) as client:
        client.app.state.tokens.verify = away  # type: ignore[attr-defined]
        answer = client.post("/v1/translate", json={"text": "a", "source": "mg", "target": "fr"},
                             headers={"Authorization": "Bearer milo_some.token"})  # fmt: skip
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert answer.json()["error"]["code"] == "store_unavailable" and "Redis" not in answer.text
