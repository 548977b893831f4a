"""Chat on the embedded SmolLM2 GGUF, and the cloud backend against a real OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from milo_voice.roles.chat import (
    SYSTEM_PROMPT,
    ChatBackendError,
    ChatInputError,
    ChatMessage,
    ChatRequest,
    CloudChat,
    LocalChat,
    fit_to_context,
)
from tests.conftest import free_port


@pytest.fixture(scope="module")
def chat(embedded_dir: Path) -> Iterator[LocalChat]:
    role = LocalChat(embedded_dir / "chat" / "model.gguf", n_ctx=4096)
    yield role
    role.close()


def ask(text: str, max_tokens: int = 24) -> ChatRequest:
    return ChatRequest([ChatMessage("user", text)], max_tokens=max_tokens, temperature=0.0)


def test_reply_has_tokens(chat: LocalChat) -> None:
    reply = chat.complete(ask("What is the capital of France?"))
    assert reply.text
    assert 0 < reply.completion_tokens <= 24
    assert reply.prompt_tokens > chat.count_tokens(SYSTEM_PROMPT) // 2
    assert reply.finish_reason in ("stop", "length")


def test_capital_of_france(chat: LocalChat) -> None:
    assert "paris" in chat.complete(ask("What is the capital of France? Answer in one word.")).text.lower()


def test_stream_gives_the_same_text_in_pieces(chat: LocalChat) -> None:
    pieces = list(chat.stream(ask("Count from one to five.")))
    assert len(pieces) > 3
    assert "".join(pieces).strip() == chat.complete(ask("Count from one to five.")).text


def test_long_conversation_is_trimmed_by_tokens_keeping_the_system_prompt() -> None:
    messages = [ChatMessage("system", "Be brief.")]
    for turn in range(40):
        messages += [ChatMessage("user", f"question {turn} " * 20), ChatMessage("assistant", f"answer {turn} " * 20)]
    messages.append(ChatMessage("user", "last question"))
    kept, dropped = fit_to_context(messages, lambda text: len(text.split()), budget=500)
    assert kept[0].content == "Be brief."
    assert kept[-1].content == "last question"
    assert dropped > 0
    assert sum(len(m.content.split()) + 8 for m in kept) <= 500
    # The most recent turns are the ones kept.
    assert "answer 39" in kept[-2].content


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (ChatRequest([]), "empty"),
        (ChatRequest([ChatMessage("user", "  ")]), "empty"),
        (ChatRequest([ChatMessage("robot", "hi")]), "role"),
        (ChatRequest([ChatMessage("user", "hi"), ChatMessage("assistant", "hello")]), "last message"),
        (ChatRequest([ChatMessage("user", "hi")], language="de"), "language"),
        (ChatRequest([ChatMessage("user", "hi")], max_tokens=0), "max_tokens"),
    ],
)
def test_bad_input_is_refused(chat: LocalChat, request_: ChatRequest, message: str) -> None:
    with pytest.raises(ChatInputError, match=message):
        chat.complete(request_)


def test_cloud_backend_completes_and_streams(openai_server: str) -> None:
    cloud = CloudChat(openai_server, model="smollm2")
    try:
        reply = cloud.complete(ask("Say hello."))
        assert reply.text and reply.completion_tokens > 0
        pieces = list(cloud.stream(ask("Say hello.")))
        assert len(pieces) > 1 and "".join(pieces).strip()
    finally:
        cloud.close()


def test_cloud_backend_down_is_a_clear_error() -> None:
    cloud = CloudChat(f"http://127.0.0.1:{free_port()}/v1", model="none", timeout=2)
    with pytest.raises(ChatBackendError, match="cloud chat backend"):
        cloud.complete(ask("hi"))
    with pytest.raises(ChatBackendError):
        list(cloud.stream(ask("hi")))
