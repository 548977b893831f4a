"""Chat: a local llama.cpp model (GGUF) or a remote OpenAI-compatible "cloud" backend.

Both backends take the same ``ChatRequest`` and either return the whole reply or
stream it piece by piece. The system prompt asks the model to answer directly in the
user's language; the conversation is trimmed to the context window by tokens,
oldest turns first, and the system prompt is always kept.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

LANGUAGE_NAMES = {"mg": "Malagasy", "fr": "French", "en": "English"}
ROLES = ("system", "user", "assistant")
MAX_MESSAGE_CHARS = 16000

SYSTEM_PROMPT = (
    "You are Milo, a friendly voice assistant for people in Madagascar. "
    "Always answer in the language the user writes in (Malagasy or French), directly, "
    "without translating your answer or commenting on the language. Keep answers short: "
    "they are read aloud."
)


class ChatInputError(ValueError):
    """A request that cannot be answered (no messages, empty message, unknown role)."""


class ChatBackendError(RuntimeError):
    """The backend failed to answer (remote server down or refusing)."""


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class ChatRequest:
    messages: list[ChatMessage]
    language: str | None = None  # a hint; the model otherwise follows the user's language
    max_tokens: int = 256
    temperature: float = 0.7


@dataclass(frozen=True)
class ChatReply:
    text: str
    completion_tokens: int
    prompt_tokens: int
    finish_reason: str
    trimmed_messages: int = 0  # older turns left out to fit the context window


class ChatBackend(Protocol):
    def complete(self, request: ChatRequest) -> ChatReply: ...

    def stream(self, request: ChatRequest) -> Iterator[str]: ...


def validate(request: ChatRequest) -> None:
    if not request.messages:
        raise ChatInputError("messages is empty")
    for message in request.messages:
        if message.role not in ROLES:
            raise ChatInputError(f"message role {message.role!r} is not one of {list(ROLES)}")
        if not message.content or not message.content.strip():
            raise ChatInputError(f"a {message.role} message is empty")
        if len(message.content) > MAX_MESSAGE_CHARS:
            raise ChatInputError(f"a message is longer than {MAX_MESSAGE_CHARS} characters")
    if request.messages[-1].role != "user":
        raise ChatInputError("the last message must come from the user")
    if request.language is not None and request.language not in LANGUAGE_NAMES:
        raise ChatInputError(f"language {request.language!r} is not one of {list(LANGUAGE_NAMES)}")
    if not 1 <= request.max_tokens <= 4096:
        raise ChatInputError("max_tokens must be between 1 and 4096")
    if not 0.0 <= request.temperature <= 2.0:
        raise ChatInputError("temperature must be between 0 and 2")


def with_system_prompt(request: ChatRequest) -> list[ChatMessage]:
    """The conversation with Milo's system prompt first (a caller's own system prompt follows it)."""
    prompt = SYSTEM_PROMPT
    if request.language:
        prompt += f" The user speaks {LANGUAGE_NAMES[request.language]}; answer in {LANGUAGE_NAMES[request.language]}."
    return [ChatMessage("system", prompt), *request.messages]


def fit_to_context(
    messages: list[ChatMessage], count_tokens: Callable[[str], int], budget: int
) -> tuple[list[ChatMessage], int]:
    """Drop the oldest non-system turns until the conversation fits ``budget`` tokens.

    Returns the kept messages and how many were left out. The system messages and the
    last user message are always kept.
    """
    # A few tokens per message go to the chat template's role markers.
    costs = [count_tokens(m.content) + 8 for m in messages]
    total = sum(costs)
    keep = [True] * len(messages)
    for i, message in enumerate(messages[:-1]):
        if total <= budget:
            break
        if message.role != "system":
            keep[i] = False
            total -= costs[i]
    kept = [m for m, k in zip(messages, keep, strict=True) if k]
    return kept, len(messages) - len(kept)


class LocalChat:
    """A GGUF model through llama-cpp-python, with the chat template stored in the GGUF."""

    def __init__(
        self,
        model_path: str | Path,
        n_ctx: int = 4096,
        n_gpu_layers: int = 0,
        main_gpu: int = 0,
        n_threads: int | None = None,
        seed: int = 1234,
        ignore_eos: bool = False,
    ) -> None:
        from llama_cpp import Llama

        self.n_ctx = n_ctx
        self._llama = Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_gpu_layers=n_gpu_layers,
            main_gpu=main_gpu,
            n_threads=n_threads,
            seed=seed,
            verbose=False,
        )
        # llama.cpp keeps one decoding state per model: one conversation at a time.
        self._lock = threading.Lock()
        # Benchmarks only: every reply runs to max_tokens, so seeded weights generate as long a
        # reply as asked instead of stopping wherever an end token happens to be drawn.
        self._logit_bias = {self._llama.token_eos(): float("-inf")} if ignore_eos else None

    def count_tokens(self, text: str) -> int:
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _prompt(self, request: ChatRequest) -> tuple[list[dict[str, str]], int]:
        validate(request)
        messages, trimmed = fit_to_context(
            with_system_prompt(request), self.count_tokens, self.n_ctx - request.max_tokens
        )
        return [{"role": m.role, "content": m.content} for m in messages], trimmed

    def complete(self, request: ChatRequest) -> ChatReply:
        messages, trimmed = self._prompt(request)
        with self._lock:
            response = self._llama.create_chat_completion(
                messages=messages,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                logit_bias=self._logit_bias,
            )
        choice = response["choices"][0]
        usage = response["usage"]
        return ChatReply(
            text=(choice["message"]["content"] or "").strip(),
            completion_tokens=usage["completion_tokens"],
            prompt_tokens=usage["prompt_tokens"],
            finish_reason=choice["finish_reason"] or "stop",
            trimmed_messages=trimmed,
        )

    def complete_batch(self, requests: list[ChatRequest]) -> list[ChatReply]:
        # llama.cpp's Python binding decodes one sequence at a time; instances give concurrency.
        return [self.complete(r) for r in requests]

    def stream(self, request: ChatRequest) -> Iterator[str]:
        messages, _ = self._prompt(request)
        with self._lock:
            for chunk in self._llama.create_chat_completion(
                messages=messages,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                logit_bias=self._logit_bias,
                stream=True,
            ):
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    yield piece


@dataclass
class CloudChat:
    """Any server speaking OpenAI's chat-completions protocol (``{base_url}/chat/completions``)."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    _client: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = httpx.Client(base_url=self.base_url.rstrip("/"), headers=headers, timeout=self.timeout)

    def _body(self, request: ChatRequest, stream: bool) -> dict[str, object]:
        validate(request)
        return {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in with_system_prompt(request)],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stream": stream,
        }

    def complete(self, request: ChatRequest) -> ChatReply:
        try:
            response = self._client.post("/chat/completions", json=self._body(request, stream=False))
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ChatBackendError(f"cloud chat backend at {self.base_url} failed: {exc}") from exc
        data = response.json()
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return ChatReply(
            text=(choice["message"].get("content") or "").strip(),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            finish_reason=choice.get("finish_reason") or "stop",
        )

    def complete_batch(self, requests: list[ChatRequest]) -> list[ChatReply]:
        return [self.complete(r) for r in requests]

    def stream(self, request: ChatRequest) -> Iterator[str]:
        try:
            with self._client.stream("POST", "/chat/completions", json=self._body(request, stream=True)) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[len("data:") :].strip()
                    if payload == "[DONE]":
                        break
                    delta = json.loads(payload)["choices"][0].get("delta", {})
                    if delta.get("content"):
                        yield delta["content"]
        except httpx.HTTPError as exc:
            raise ChatBackendError(f"cloud chat backend at {self.base_url} failed: {exc}") from exc

    def close(self) -> None:
        self._client.close()
