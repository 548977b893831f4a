"""Chat: a local llama.cpp model (GGUF) or a remote OpenAI-compatible "cloud" backend.

Both backends take the same ``ChatRequest`` and serve many at once: ``start`` hands a
request over and reports its reply to a sink (text pieces as they come, then
``ChatDone`` or ``Failed``); ``complete``, ``complete_batch`` and ``stream`` are the
blocking forms built on it. The system prompt asks the model to answer directly in the
user's language; the conversation is trimmed to the context window by tokens, oldest
turns first, and the system prompt is always kept.

The local backend decodes every conversation in flight together (``LlamaEngine``,
continuous batching); the cloud backend leaves that to the remote server and runs each
request on its own thread.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import httpx

from contract.records import MAX_STOP_CHARS, MAX_STOP_STRINGS, ChatMessage, ChatReply, ChatRequest, InputError
from milo_voice.roles.generation import Failed, Finished, GenerationRequest, Sampling, TextPiece

if TYPE_CHECKING:
    from milo_voice.roles.generation import EngineObserver
    from milo_voice.roles.llama_engine import Generation, LlamaEngine

LANGUAGE_NAMES = {"mg": "Malagasy", "fr": "French", "en": "English"}
ROLES = ("system", "user", "assistant")
MAX_MESSAGE_CHARS = 16000
DEFAULT_MAX_TOKENS = 256
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.95

SYSTEM_PROMPT = (
    "You are Milo, a friendly voice assistant for people in Madagascar. "
    "Always answer in the language the user writes in (Malagasy or French), directly, "
    "without translating your answer or commenting on the language. Keep answers short: "
    "they are read aloud."
)


class ChatInputError(InputError):
    """A request that cannot be answered (no messages, empty message, unknown role)."""


class ChatBackendError(RuntimeError):
    """The backend failed to answer (remote server down or refusing)."""


@dataclass(frozen=True)
class ChatDefaults:
    """What a request leaves to the model (None in its record): the registry's chat parameters."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P

    @classmethod
    def of(cls, params: Mapping[str, object]) -> ChatDefaults:
        return cls(
            int(params.get("max_tokens", DEFAULT_MAX_TOKENS)),  # type: ignore[call-overload]
            float(params.get("temperature", DEFAULT_TEMPERATURE)),  # type: ignore[arg-type]
            float(params.get("top_p", DEFAULT_TOP_P)),  # type: ignore[arg-type]
        )

    def resolve(self, request: ChatRequest) -> ChatRequest:
        """``request`` with what it left out set, then checked (``ChatInputError``): what backends run."""
        resolved = replace(
            request,
            max_tokens=self.max_tokens if request.max_tokens is None else request.max_tokens,
            temperature=self.temperature if request.temperature is None else request.temperature,
            top_p=self.top_p if request.top_p is None else request.top_p,
        )
        validate(resolved)
        return resolved


@dataclass(frozen=True)
class ChatDone:
    reply: ChatReply


ChatEvent = TextPiece | ChatDone | Failed
ChatSink = Callable[[ChatEvent], None]


class Started(Protocol):
    """A request handed to a backend: ``dequeued`` is set once it is being answered (or has ended)."""

    dequeued: threading.Event

    def cancel(self) -> None: ...


class ChatBackend(Protocol):
    def start(
        self,
        request: ChatRequest,
        sink: ChatSink,
        is_cancelled: Callable[[], bool] | None = None,
        pieces: bool = True,
    ) -> Started: ...

    def complete(self, request: ChatRequest) -> ChatReply: ...

    def complete_batch(self, requests: list[ChatRequest]) -> list[ChatReply]: ...

    def stream(self, request: ChatRequest) -> Iterator[str]: ...


def validate(request: ChatRequest) -> None:
    """What every backend refuses; sampling values left out (None) are refused too: ``ChatDefaults.resolve``."""
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
    if request.max_tokens is None or not 1 <= request.max_tokens <= 4096:
        raise ChatInputError("max_tokens must be between 1 and 4096")
    if request.temperature is None or not 0.0 <= request.temperature <= 2.0:
        raise ChatInputError("temperature must be between 0 and 2")
    if request.top_p is None or not 0.0 < request.top_p <= 1.0:
        raise ChatInputError("top_p must be above 0 and at most 1")
    if len(request.stop) > MAX_STOP_STRINGS:
        raise ChatInputError(f"at most {MAX_STOP_STRINGS} stop strings")
    if any(not 1 <= len(s) <= MAX_STOP_CHARS for s in request.stop):
        raise ChatInputError(f"a stop string has 1 to {MAX_STOP_CHARS} characters")
    if request.seed is not None and not 0 <= request.seed < 2**63:
        raise ChatInputError("seed must be 0 or more, below 2^63")


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


class _Collector:
    """A sink that keeps what a generation reports, for the blocking forms."""

    def __init__(self) -> None:
        self.events: queue.SimpleQueue[ChatEvent] = queue.SimpleQueue()

    def __call__(self, event: ChatEvent) -> None:
        self.events.put(event)

    def reply(self) -> ChatReply:
        while True:
            event = self.events.get()
            if isinstance(event, ChatDone):
                return event.reply
            if isinstance(event, Failed):
                raise event.error

    def pieces(self, handle: Started) -> Iterator[str]:
        finished = False
        try:
            while True:
                event = self.events.get()
                if isinstance(event, TextPiece):
                    yield event.text
                elif isinstance(event, Failed):
                    finished = True
                    raise event.error
                else:
                    finished = True
                    return
        finally:
            if not finished:  # the reader stopped early (closed, or its client left)
                handle.cancel()


class _BlockingForms:
    """``complete``, ``complete_batch`` and ``stream`` on top of a backend's ``start``."""

    def start(
        self,
        request: ChatRequest,
        sink: ChatSink,
        is_cancelled: Callable[[], bool] | None = None,
        pieces: bool = True,
    ) -> Started:
        """Hand ``request`` over. ``sink`` gets ``TextPiece`` events only with ``pieces`` (a caller
        that wants the whole reply only says False), then one ``ChatDone`` or ``Failed``."""
        raise NotImplementedError

    def complete(self, request: ChatRequest) -> ChatReply:
        return self.complete_batch([request])[0]

    def complete_batch(self, requests: list[ChatRequest]) -> list[ChatReply]:
        """Every request started at once (the backend serves them together), replies in order."""
        collectors = [_Collector() for _ in requests]
        handles = []
        try:
            for request, collector in zip(requests, collectors, strict=True):
                handles.append(self.start(request, collector, pieces=False))
            return [collector.reply() for collector in collectors]
        except BaseException:
            for handle in handles:
                handle.cancel()
            raise

    def stream(self, request: ChatRequest) -> Iterator[str]:
        collector = _Collector()
        yield from collector.pieces(self.start(request, collector))


class LocalChat(_BlockingForms):
    """A GGUF model on llama.cpp with the chat template stored in the GGUF, many conversations at once.

    ``slots`` conversations are decoded together, each in its own ``n_ctx`` tokens of
    KV cache; more wait in the engine's queue (at most ``max_queued``). The system
    prompt's tokens are evaluated once at start and copied into every slot.
    """

    def __init__(
        self,
        model_path: str | Path,
        n_ctx: int = 4096,
        slots: int = 4,
        batch_tokens: int = 512,
        max_queued: int = 256,
        n_gpu_layers: int = 0,
        main_gpu: int = 0,
        n_threads: int | None = None,
        observer: EngineObserver | None = None,
        step_prompt_tokens: int | None = None,
        defaults: ChatDefaults | None = None,
    ) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from milo_voice.roles.llama_engine import LlamaEngine

        self.defaults = defaults or ChatDefaults()
        self.engine: LlamaEngine = LlamaEngine(
            model_path,
            slots=slots,
            slot_context=n_ctx,
            batch_tokens=batch_tokens,
            max_queued=max_queued,
            n_gpu_layers=n_gpu_layers,
            main_gpu=main_gpu,
            n_threads=n_threads,
            observer=observer,
            step_prompt_tokens=step_prompt_tokens,
        )
        try:
            template = self.engine.metadata("tokenizer.chat_template")
            if template is None:
                raise ValueError(f"{model_path} has no chat template (tokenizer.chat_template)")
            self._formatter = Jinja2ChatFormatter(
                template,
                eos_token=self.engine.token_text(self.engine.eos_token),
                bos_token=self.engine.token_text(self.engine.bos_token),
            )
            self.n_ctx = self.engine.slot_context
            self.concurrency = self.engine.slots
            self.engine.warm_prefix(self.shared_prefix())
        except BaseException:
            self.engine.close()
            raise

    def count_tokens(self, text: str) -> int:
        return len(self.engine.tokenize(text, special=False))

    def template(self, messages: Sequence[ChatMessage]) -> str:
        """The prompt's text: the GGUF's chat template applied, the assistant's turn opened."""
        return str(self._formatter(messages=[{"role": m.role, "content": m.content} for m in messages]).prompt)

    def render(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The prompt's tokens (``template``'s text, its special tokens parsed)."""
        return self.engine.tokenize(self.template(messages))

    def shared_prefix(self) -> list[int]:
        """The tokens every prompt starts with: the template's opening and Milo's system prompt."""
        renders = [
            self.render(with_system_prompt(ChatRequest([ChatMessage("user", probe)], language=language)))
            for language in (None, *LANGUAGE_NAMES)
            for probe in ("a", "b")
        ]
        shared = 0
        while all(len(r) > shared and r[shared] == renders[0][shared] for r in renders):
            shared += 1
        return renders[0][:shared]

    def prompt(self, request: ChatRequest) -> tuple[tuple[int, ...], int]:
        """The prompt's tokens, trimmed to leave the reply its room, and how many messages were left out.

        The reply's room is ``max_tokens``, at most half the slot. Oldest turns go first;
        a last message too long by itself keeps its end, where the question usually is.
        ``request`` is resolved (``ChatDefaults.resolve``).
        """
        budget = self.n_ctx - min(request.max_tokens, self.n_ctx // 2)
        messages, trimmed = fit_to_context(with_system_prompt(request), self.count_tokens, budget)
        tokens = self.render(messages)
        while len(tokens) > budget:
            droppable = [i for i, m in enumerate(messages[:-1]) if m.role != "system"]
            if droppable:
                del messages[droppable[0]]
                trimmed += 1
            else:
                messages[-1] = self._keep_end(messages[-1], len(tokens) - budget)
            tokens = self.render(messages)
        return tuple(tokens), trimmed

    def _keep_end(self, message: ChatMessage, excess: int) -> ChatMessage:
        content = self.engine.tokenize(message.content, special=False)
        # A few tokens more than the excess: retokenising the cut text can merge differently.
        kept = self.engine.detokenize(content[min(len(content) - 1, excess + 4) :])
        return replace(message, content=kept)

    def start(
        self,
        request: ChatRequest,
        sink: ChatSink,
        is_cancelled: Callable[[], bool] | None = None,
        pieces: bool = True,
    ) -> Generation:
        """Queue ``request``; its text pieces (with ``pieces``), then its ``ChatDone``, go to ``sink``
        from the engine's thread. A refused request raises ``ChatInputError`` here."""
        request = self.defaults.resolve(request)
        tokens, trimmed = self.prompt(request)

        def relay(event: TextPiece | Finished | Failed) -> None:
            if isinstance(event, Finished):
                result = event.result
                reply = ChatReply(
                    text=result.text.strip(),
                    completion_tokens=result.completion_tokens,
                    prompt_tokens=result.prompt_tokens,
                    finish_reason=result.finish_reason,
                    trimmed_messages=trimmed,
                    cached_tokens=result.cached_tokens,
                )
                sink(ChatDone(reply))
            else:
                sink(event)

        generation = GenerationRequest(tokens, request.max_tokens, self.sampling(request), request.stop, pieces)
        return self.engine.submit(generation, relay, is_cancelled)

    def sampling(self, request: ChatRequest) -> Sampling:
        """How ``request`` (its defaults resolved) picks its tokens."""
        return Sampling(temperature=request.temperature, top_p=request.top_p, seed=request.seed)

    def close(self) -> None:
        self.engine.close()


class _CloudCall:
    """One request to the cloud backend, on its own thread (the remote server does the queueing)."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.dequeued = threading.Event()
        self.dequeued.set()

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class CloudChat(_BlockingForms):
    """Any server speaking OpenAI's chat-completions protocol (``{base_url}/chat/completions``)."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    concurrency: int = 8  # requests in flight to the remote server at once
    defaults: ChatDefaults = field(default_factory=ChatDefaults)
    _client: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = httpx.Client(base_url=self.base_url.rstrip("/"), headers=headers, timeout=self.timeout)

    def _body(self, request: ChatRequest, stream: bool) -> dict[str, object]:
        request = self.defaults.resolve(request)
        body: dict[str, object] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in with_system_prompt(request)],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    def start(
        self,
        request: ChatRequest,
        sink: ChatSink,
        is_cancelled: Callable[[], bool] | None = None,
        pieces: bool = True,
    ) -> _CloudCall:
        """One thread per request; without ``pieces`` the whole reply is asked for (servers report
        token usage there, not always in a stream)."""
        body = self._body(request, stream=pieces)
        call = _CloudCall()

        def gone() -> bool:
            return call.cancelled.is_set() or (is_cancelled is not None and is_cancelled())

        def run() -> None:
            try:
                reply = self._stream_into(body, sink, gone) if pieces else self._whole(body)
                sink(ChatDone(reply))
            except Exception as exc:  # the sink reports it; the server lives on
                sink(Failed(exc))

        threading.Thread(target=run, name="cloud-chat", daemon=True).start()
        return call

    def _whole(self, body: dict[str, object]) -> ChatReply:
        try:
            response = self._client.post("/chat/completions", json=body)
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

    def _stream_into(self, body: dict[str, object], sink: ChatSink, gone: Callable[[], bool]) -> ChatReply:
        pieces: list[str] = []
        finish_reason = "stop"
        usage: dict[str, int] = {}
        try:
            with self._client.stream("POST", "/chat/completions", json=body) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if gone():
                        finish_reason = "cancelled"
                        break
                    if not line.startswith("data:"):
                        continue
                    payload = line[len("data:") :].strip()
                    if payload == "[DONE]":
                        break
                    chunk = json.loads(payload)
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices", [])[:1]:
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            pieces.append(content)
                            sink(TextPiece(content))
                        finish_reason = choice.get("finish_reason") or finish_reason
        except httpx.HTTPError as exc:
            raise ChatBackendError(f"cloud chat backend at {self.base_url} failed: {exc}") from exc
        return ChatReply(
            text="".join(pieces).strip(),
            # Servers that do not report usage in a stream: one piece is about one token.
            completion_tokens=int(usage.get("completion_tokens", len(pieces))),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            finish_reason=finish_reason,
        )

    def close(self) -> None:
        self._client.close()
