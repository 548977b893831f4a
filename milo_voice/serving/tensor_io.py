"""Triton tensors in, a role's batch call, Triton tensors out: for any Triton server.

Each served model gets one handler built around one role instance. A batched model's
handler takes the inputs of a whole batch (``[batch, 1]`` arrays) and returns its
outputs; a streaming model's handler takes one request and yields one set of outputs
per piece. The handlers know nothing of the server: the PyTriton host wraps them with
``@batch``, the stock Triton Python backend (``python_backend``) with its own request
objects, and tests call them directly.

A request that fails validation gets its message in the ``error`` tensor while the rest
of its batch is computed normally.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from client import tensors
from milo_voice.registry import ModelSpec
from milo_voice.roles.chat import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    ChatBackend,
    ChatDone,
    ChatEvent,
    ChatInputError,
    ChatMessage,
    ChatReply,
    ChatRequest,
    validate,
)
from milo_voice.roles.generation import TextPiece

if TYPE_CHECKING:
    from milo_voice.roles.stt import SpeechToText
    from milo_voice.roles.translate import Translator
    from milo_voice.roles.tts import TextToSpeech

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Result = TypeVar("Result")
Outputs = dict[str, np.ndarray]
Inputs = dict[str, np.ndarray]
# What a request's parsing and validation raise for bad input (not a server fault).
INPUT_ERRORS = (ValueError, KeyError, TypeError, UnicodeDecodeError)


@dataclass(frozen=True)
class BatchHandler:
    """A batched model: its optional inputs' defaults and the call that computes a batch."""

    compute: Callable[[Inputs], Outputs]
    defaults: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamHandler:
    """A decoupled model: one request in, one set of outputs per piece out.

    ``idle`` is a filler piece (one that clients skip) for a server that answers
    several streams in lockstep and must say something for one that has ended.
    """

    stream: Callable[[Inputs], Iterator[Outputs]]
    idle: Outputs


def with_defaults(request: Inputs, defaults: dict[str, Any]) -> Inputs:
    """``request`` with every missing optional input set to its default, one row per sample."""
    size = len(next(iter(request.values())))
    filled = dict(request)
    for name, value in defaults.items():
        if name not in filled:
            dtype = np.object_ if isinstance(value, bytes) else np.asarray(value).dtype
            filled[name] = np.array([[value]] * size, dtype=dtype)
    return filled


def concatenate(requests: Sequence[Inputs]) -> tuple[Inputs, list[int]]:
    """Several requests' inputs as one batch, and each request's number of rows."""
    sizes = [len(next(iter(r.values()))) for r in requests]
    names = requests[0].keys()
    return {name: np.concatenate([r[name] for r in requests]) for name in names}, sizes


def split(outputs: Outputs, sizes: Sequence[int]) -> list[Outputs]:
    """A batch's outputs cut back into one set per request (the inverse of ``concatenate``)."""
    bounds = np.cumsum([0, *sizes])
    return [{name: value[start:end] for name, value in outputs.items()} for start, end in itertools.pairwise(bounds)]


def text(cell: np.ndarray) -> str:
    value = cell[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _bytes_column(values: Sequence[str | bytes]) -> np.ndarray:
    return np.array([[v.encode("utf-8") if isinstance(v, str) else v] for v in values], dtype=np.object_)


def _float_column(values: Sequence[float]) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.float32)


def _int_column(values: Sequence[int]) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.int32)


def run_valid(
    parse: Callable[[int], Request],
    count: int,
    check: Callable[[Request], None],
    compute: Callable[[list[Request]], list[Result]],
) -> tuple[list[Result | None], list[str]]:
    """Parse and validate each request; compute the valid ones in one batch call."""
    errors = [""] * count
    parsed: dict[int, Request] = {}
    for i in range(count):
        try:
            request = parse(i)
            check(request)
            parsed[i] = request
        except INPUT_ERRORS as exc:
            errors[i] = str(exc) or type(exc).__name__
    results: list[Result | None] = [None] * count
    if parsed:
        for i, result in zip(parsed, isolated(compute, list(parsed.values())), strict=True):
            if isinstance(result, ModelFailure):
                cause = result.error
                errors[i] = f"the model could not process this request: {type(cause).__name__}: {cause}"
            elif isinstance(result, Exception):  # refused by the role once computed (an output cut short)
                errors[i] = str(result) or type(result).__name__
            else:
                results[i] = result
    return results, errors


class ModelFailure(Exception):
    """A request that made the model fail when computed alone (``isolated``); ``error`` is why."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def isolated(compute: Callable[[list[Request]], list[Result]], requests: list[Request]) -> list[Result | ModelFailure]:
    """``compute(requests)``; if the batch fails, its halves again, down to the requests that fail alone.

    One request's failure inside the model (an input beyond what it can hold) is then that
    request's ``ModelFailure``, not its batch-mates' error. A request alone in its batch gets the
    same answer (whether it was batched with others is the scheduler's chance). When every request
    of a batch of several fails alone, the model itself is failing: the first error is raised, as
    the server's error for the whole call. (A role may also answer a request with its input error
    in place, found only by computing: that is an answer, passed on as it is.)
    """
    outcome = _bisected(compute, requests)
    failed = [r for r in outcome if isinstance(r, ModelFailure)]
    if len(failed) > 1 and len(failed) == len(outcome):
        raise failed[0].error
    if failed:
        log.warning("%d of %d requests of a batch failed alone; the others were answered", len(failed), len(requests))
    return outcome


def _bisected(compute: Callable[[list[Request]], list[Result]], requests: list[Request]) -> list[Result | ModelFailure]:
    try:
        return list(compute(requests))
    except Exception as exc:  # what failed is found by splitting the batch
        if len(requests) == 1:
            return [ModelFailure(exc)]
        middle = len(requests) // 2
        return _bisected(compute, requests[:middle]) + _bisected(compute, requests[middle:])


# -- speech to text ------------------------------------------------------------


# Each handler imports its role's records where it is built: a model's process loads only its own
# role's libraries (a chat host no torch, CTranslate2 or FFmpeg).


def stt_handler(role: SpeechToText) -> BatchHandler:
    from milo_voice.roles.stt import SttRequest

    def compute(inputs: Inputs) -> Outputs:
        audio, language = inputs["audio"], inputs["language"]
        results, errors = run_valid(
            lambda i: SttRequest(tensors.decode_audio(audio[i][0]), text(language[i])),
            len(audio),
            role.validate,
            role.transcribe_batch,
        )
        return {
            "text": _bytes_column([r.text if r else "" for r in results]),
            "language": _bytes_column([r.language if r else "" for r in results]),
            "language_probability": _float_column([r.language_probability if r else 0.0 for r in results]),
            "confidence": _float_column([r.confidence if r else 0.0 for r in results]),
            "duration": _float_column([r.duration if r else 0.0 for r in results]),
            "segments": _bytes_column([json.dumps([asdict(s) for s in r.segments]) if r else "[]" for r in results]),
            "error": _bytes_column(errors),
        }

    return BatchHandler(compute, {"language": b"auto"})


# -- text to speech ------------------------------------------------------------


def tts_handler(role: TextToSpeech) -> BatchHandler:
    from milo_voice.roles.tts import TtsRequest

    def compute(inputs: Inputs) -> Outputs:
        texts, language, speed = inputs["text"], inputs["language"], inputs["speed"]
        results, errors = run_valid(
            lambda i: TtsRequest(text(texts[i]), text(language[i]), float(speed[i][0])),
            len(texts),
            role.validate,
            role.synthesize_batch,
        )
        # Triton cannot ship a zero-length tensor: a batch of refusals still carries one sample.
        longest = max((r.audio.size for r in results if r), default=0) or 1
        audio = np.zeros((len(results), longest), dtype=np.float32)
        for i, result in enumerate(results):
            if result:
                audio[i, : result.audio.size] = result.audio
        return {
            "audio": audio,
            "num_samples": _int_column([r.audio.size if r else 0 for r in results]),
            "sample_rate": _int_column([r.sample_rate if r else 0 for r in results]),
            "spoken_text": _bytes_column([r.spoken_text if r else "" for r in results]),
            "error": _bytes_column(errors),
        }

    return BatchHandler(compute, {"speed": np.float32(1.0)})


class EarlyCancels:
    """Request ids cancelled before their request arrived, so that it is cancelled when it does.

    A client gives up (and sends the cancel) while its request still waits in Triton's queue or
    on its way; the cancel then finds nothing running. Kept ``keep_s`` seconds, at most ``size``.
    """

    def __init__(self, keep_s: float = 60.0, size: int = 4096) -> None:
        self.keep_s = keep_s
        self.size = size
        self._ids: dict[str, float] = {}  # insertion order is expiry order

    def add(self, request_id: str) -> None:
        now = time.monotonic()
        self._ids.pop(request_id, None)
        self._ids[request_id] = now + self.keep_s
        while self._ids and (len(self._ids) > self.size or next(iter(self._ids.values())) < now):
            del self._ids[next(iter(self._ids))]

    def take(self, request_id: str) -> bool:
        """True (once) if ``request_id`` was cancelled before it arrived."""
        deadline = self._ids.pop(request_id, None)
        return deadline is not None and deadline >= time.monotonic()


class RunningRequests:
    """Requests running in this process by their caller's request id, for a cancel model to stop.

    PyTriton tells its callables nothing of a client gone, so the client (which knows) calls
    the model's cancel model (``chat_cancel``, ``tts_cancel``) with the id it gave the request;
    the stock server's Python backend sees the cancelled request itself. A cancel that finds
    nothing running is kept (``EarlyCancels``): its request is cancelled when it is added.
    """

    def __init__(self) -> None:
        self._cancel: dict[str, Callable[[], None]] = {}
        self._early = EarlyCancels()
        self._lock = threading.Lock()

    def add(self, request_id: str, cancel: Callable[[], None]) -> bool:
        """``cancel`` stops the request ``request_id`` (no id: nothing to add). True when a cancel
        for it came first: the caller then cancels it (``cancel(request_id)``), outside its locks."""
        if not request_id:
            return False
        with self._lock:
            self._cancel[request_id] = cancel
            return self._early.take(request_id)

    def remove(self, request_id: str, cancel: Callable[[], None] | None = None) -> None:
        """The request ended (its entry only, when ``cancel`` is given: an id may be used again)."""
        with self._lock:
            if cancel is None or self._cancel.get(request_id) == cancel:
                self._cancel.pop(request_id, None)

    def cancel(self, request_id: str) -> bool:
        """Stop ``request_id``; False when nothing runs under it (the id is then kept a while)."""
        with self._lock:
            cancel = self._cancel.pop(request_id, None)
            if cancel is None:
                self._early.add(request_id)
                return False
        cancel()
        return True

    @contextmanager
    def running(self, request_id: str) -> Iterator[threading.Event]:
        """An event set when ``request_id`` is cancelled, while the block runs (no id: never set)."""
        cancelled = threading.Event()
        if self.add(request_id, cancelled.set):
            cancelled.set()
        try:
            yield cancelled
        finally:
            self.remove(request_id, cancelled.set)


def cancel_handler(cancel: Callable[[str], bool]) -> BatchHandler:
    """A cancel model (``chat_cancel``, ``tts_cancel``): ``cancelled`` is 1 where ``cancel`` stopped
    a running request by its id."""

    def compute(inputs: Inputs) -> Outputs:
        ids = [text(row) for row in inputs["request_id"]]
        return {"cancelled": _int_column([int(cancel(i)) if i else 0 for i in ids])}

    return BatchHandler(compute)


def tts_stream_handler(role: TextToSpeech, running: RunningRequests | None = None) -> StreamHandler:
    running = running or RunningRequests()

    def stream(request: Inputs) -> Iterator[Outputs]:
        speed = float(request["speed"][0]) if "speed" in request else 1.0
        request_id = text(request["request_id"]) if "request_id" in request else ""
        with running.running(request_id) as cancelled:
            sentences = role.stream(text(request["text"]), text(request["language"]), speed)
            while not cancelled.is_set():  # checked before each sentence is synthesised
                speech = next(sentences, None)
                if speech is None:
                    return
                yield {
                    "audio": speech.audio,
                    "sample_rate": np.array([speech.sample_rate], dtype=np.int32),
                    "spoken_text": np.array([speech.spoken_text.encode("utf-8")], dtype=np.object_),
                }

    # sample_rate 0 marks a filler piece; clients skip it.
    idle = {
        "audio": np.zeros(1, dtype=np.float32),
        "sample_rate": np.array([0], dtype=np.int32),
        "spoken_text": np.array([b""], dtype=np.object_),
    }
    return StreamHandler(stream, idle)


# -- translation -----------------------------------------------------------------


def translate_handler(role: Translator) -> BatchHandler:
    from milo_voice.roles.translate import TranslateRequest

    def compute(inputs: Inputs) -> Outputs:
        texts, source, target = inputs["text"], inputs["source"], inputs["target"]
        results, errors = run_valid(
            lambda i: TranslateRequest(text(texts[i]), text(source[i]), text(target[i])),
            len(texts),
            role.validate,
            role.translate_batch,
        )
        return {
            "translation": _bytes_column([r.text if r else "" for r in results]),
            "score": _float_column([r.score if r else 0.0 for r in results]),
            "error": _bytes_column(errors),
        }

    return BatchHandler(compute)


# -- chat ------------------------------------------------------------------------
#
# The chat role decodes many requests at once, so its models are not computed batch by
# batch: each request is started on its own and its outputs are emitted from the role's
# thread when they come (all at once for ``chat``, piece by piece for ``chat_stream``).

Emit = Callable[[Outputs | Exception, bool], None]  # (outputs or a failure, final?)


class RequestStarted(Protocol):
    dequeued: threading.Event  # set once the request holds a slot or has ended

    def cancel(self) -> None: ...


@dataclass(frozen=True)
class GenerationHandler:
    """A model whose role serves many requests at once, each reporting its outputs through ``emit``.

    ``start`` never raises: a refused request emits its error (an ``error`` output for
    ``chat``, an exception for the stream) as its final outputs. ``concurrency`` is how
    many requests the role decodes together, so a server knows how many to let in.
    ``merge`` joins two pieces of one stream that are both waiting to be sent: a server that
    falls behind sends fewer, larger responses instead of falling further behind.
    """

    start: Callable[[Inputs, Emit, Callable[[], bool] | None], RequestStarted]
    concurrency: int
    streaming: bool
    merge: Callable[[Outputs, Outputs], Outputs] | None = None


@dataclass(frozen=True)
class ChatDefaults:
    """The registry's defaults for what a chat request leaves out."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE

    @classmethod
    def of(cls, spec: ModelSpec) -> ChatDefaults:
        return cls(
            int(spec.params.get("max_tokens", DEFAULT_MAX_TOKENS)),
            float(spec.params.get("temperature", DEFAULT_TEMPERATURE)),
        )


def _cell(inputs: Inputs, name: str) -> Any:
    """The one value of input ``name`` of one request (with or without a batch axis), or None."""
    if name not in inputs:
        return None
    value = np.asarray(inputs[name]).reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value


def parse_chat_request(inputs: Inputs, defaults: ChatDefaults) -> tuple[ChatRequest, str]:
    """One request's chat inputs as a ``ChatRequest``, and its ``request_id`` ("" when none)."""
    decoded = json.loads(_cell(inputs, "messages"))
    if not isinstance(decoded, list) or not all(isinstance(m, dict) for m in decoded):
        raise ValueError('messages must be a JSON list of {"role", "content"} objects')
    stop = json.loads(_cell(inputs, "stop") or "[]")
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ValueError("stop must be a JSON list of strings")
    max_tokens, temperature = _cell(inputs, "max_tokens"), _cell(inputs, "temperature")
    top_p, seed = _cell(inputs, "top_p"), _cell(inputs, "seed")
    if seed is not None and seed < 0:
        raise ValueError("seed must be 0 or more")
    request = ChatRequest(
        messages=[ChatMessage(str(m.get("role", "")), str(m.get("content", ""))) for m in decoded],
        language=_cell(inputs, "language") or None,
        max_tokens=int(max_tokens) if max_tokens is not None else defaults.max_tokens,
        temperature=float(temperature) if temperature is not None else defaults.temperature,
        top_p=float(top_p) if top_p is not None else DEFAULT_TOP_P,
        seed=int(seed) if seed is not None else None,
        stop=tuple(stop),
    )
    validate(request)
    return request, _cell(inputs, "request_id") or ""


class _Ended:
    """What ``start`` returns for a request that ended before it began (refused)."""

    def __init__(self) -> None:
        self.dequeued = threading.Event()
        self.dequeued.set()

    def cancel(self) -> None:
        pass


class _StreamPacer:
    """A stream's text pieces, joined so that at most one response leaves per ``interval_s``.

    Every response costs the same on its way out (the model host, Triton, the facade, the
    client) whatever its length, and on a CPU host that work takes the cores from decoding. The
    first piece leaves at once (time to first token) and the last with the finish reason;
    between them, text waits at most one engine step past the interval.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._held: list[str] = []
        self._sent_at: float | None = None

    def piece(self, text: str) -> str | None:
        """``text`` taken in; the text to send now, or None to hold it."""
        self._held.append(text)
        now = time.monotonic()
        if self._sent_at is not None and now - self._sent_at < self.interval_s:
            return None
        self._sent_at = now
        return self.rest()

    def rest(self) -> str:
        """What is held, taken out."""
        text, self._held = "".join(self._held), []
        return text


class ChatService:
    """One chat backend behind Triton's chat models; running requests are kept by id for ``chat_cancel``.

    ``stream_interval_s`` paces ``chat_stream``: see ``_StreamPacer``.
    """

    def __init__(self, backend: ChatBackend, defaults: ChatDefaults, stream_interval_s: float = 0.0) -> None:
        self.backend = backend
        self.defaults = defaults
        self.stream_interval_s = stream_interval_s
        self.concurrency = int(getattr(backend, "concurrency", 1))
        self.in_flight = 0
        self.running = RunningRequests()
        self._lock = threading.Lock()

    def start(self, inputs: Inputs, emit: Emit, is_cancelled: Callable[[], bool] | None, streaming: bool) -> Any:
        try:
            request, request_id = parse_chat_request(inputs, self.defaults)
        except INPUT_ERRORS as exc:
            message = str(exc) or type(exc).__name__
            emit(ChatInputError(message) if streaming else _chat_outputs(None, message), True)
            return _Ended()
        pacer = _StreamPacer(self.stream_interval_s)
        ended = False

        def sink(event: ChatEvent) -> None:
            nonlocal ended
            if isinstance(event, TextPiece):
                text = pacer.piece(event.text)
                if text is not None:
                    emit(_stream_piece(text, ""), False)
                return
            with self._lock:
                ended = True
                self.in_flight -= 1
                self.running.remove(request_id)
            if not streaming:
                emit(_chat_outputs(event.reply) if isinstance(event, ChatDone) else event.error, True)
            elif isinstance(event, ChatDone):
                emit(_stream_piece(pacer.rest(), event.reply.finish_reason), True)
            else:
                held = pacer.rest()
                if held:
                    emit(_stream_piece(held, ""), False)
                emit(event.error, True)

        with self._lock:
            self.in_flight += 1
        try:
            started = self.backend.start(request, sink, is_cancelled, pieces=streaming)
        except Exception as exc:  # refused by the template, a full queue, a backend gone
            with self._lock:
                self.in_flight -= 1
            refused = isinstance(exc, ChatInputError) and not streaming
            emit(_chat_outputs(None, str(exc)) if refused else exc, True)
            return _Ended()
        with self._lock:
            # A reply may end before ``start`` returns: then there is nothing left to cancel.
            cancelled_early = not ended and self.running.add(request_id, started.cancel)
        if cancelled_early:  # the engine drops it at admission, before any compute
            self.running.cancel(request_id)
        return started

    def cancel(self, request_id: str) -> bool:
        return self.running.cancel(request_id)

    def close(self) -> None:
        """Stop the backend (a local engine's thread); what it still runs fails with a clear error."""
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


def _chat_outputs(reply: ChatReply | None, error: str = "") -> Outputs:
    return {
        "text": _bytes_column([reply.text if reply else ""]),
        "completion_tokens": _int_column([reply.completion_tokens if reply else 0]),
        "prompt_tokens": _int_column([reply.prompt_tokens if reply else 0]),
        "finish_reason": _bytes_column([reply.finish_reason if reply else "error"]),
        "error": _bytes_column([error]),
    }


def _stream_piece(token: str, finish_reason: str) -> Outputs:
    return {
        "token": np.array([token.encode("utf-8")], dtype=np.object_),
        "finish_reason": np.array([finish_reason.encode("utf-8")], dtype=np.object_),
    }


Queued = tuple[Any, Outputs | Exception, bool]  # (whose stream, its outputs or error, final)


def join_queued(items: Sequence[Queued], merge: Callable[[Outputs, Outputs], Outputs] | None) -> list[Queued]:
    """Queued pieces, each stream's consecutive ones joined by ``merge``; order, errors and finals kept."""
    if merge is None:
        return list(items)
    joined: list[Queued] = []
    for key, outputs, final in items:
        last = next((k for k in range(len(joined) - 1, -1, -1) if joined[k][0] == key), None)
        if last is not None and not joined[last][2]:
            previous = joined[last][1]
            if not isinstance(previous, Exception) and not isinstance(outputs, Exception):
                joined[last] = (key, merge(previous, outputs), final)
                continue
        joined.append((key, outputs, final))
    return joined


def merge_stream_pieces(first: Outputs, then: Outputs) -> Outputs:
    """Two consecutive ``chat_stream`` pieces as one: the texts joined, the later finish reason."""
    token = first["token"][0] + then["token"][0]
    return {
        "token": np.array([token], dtype=np.object_),
        "finish_reason": then["finish_reason"] if then["finish_reason"][0] else first["finish_reason"],
    }


def chat_handler(service: ChatService) -> GenerationHandler:
    def start(inputs: Inputs, emit: Emit, is_cancelled: Callable[[], bool] | None) -> Any:
        return service.start(inputs, emit, is_cancelled, streaming=False)

    return GenerationHandler(start, service.concurrency, streaming=False)


def chat_stream_handler(services: Sequence[ChatService]) -> GenerationHandler:
    """Streams of any number of instances: each stream goes to the one with the fewest in flight."""

    def start(inputs: Inputs, emit: Emit, is_cancelled: Callable[[], bool] | None) -> Any:
        service = min(services, key=lambda s: s.in_flight)
        return service.start(inputs, emit, is_cancelled, streaming=True)

    return GenerationHandler(start, sum(s.concurrency for s in services), True, merge_stream_pieces)


def chat_cancel_handler(services: Sequence[ChatService]) -> BatchHandler:
    """Cancels by request id in every instance of the model (the request runs in one of them)."""
    # Every instance hears of it (no short cut): one that has not seen the request yet keeps the id.
    return cancel_handler(lambda request_id: any([s.cancel(request_id) for s in services]))


# -- which handler serves which model ------------------------------------------------

Handler = BatchHandler | StreamHandler | GenerationHandler

_FACTORIES: dict[str, Callable[..., Handler]] = {
    "stt": stt_handler,
    "tts": tts_handler,
    "tts_stream": tts_stream_handler,
    "translate": translate_handler,
}
_CHAT_FACTORIES: dict[str, Callable[[ChatService], GenerationHandler]] = {
    "chat": chat_handler,
    "chat_stream": lambda service: chat_stream_handler([service]),
}


def handler_for(io: tensors.ModelIO, spec: ModelSpec, instance: Any, running: RunningRequests | None = None) -> Handler:
    """The handler that serves ``io`` (a role's model or its stream) with one instance of ``spec``.

    A chat instance is a ``ChatService`` (``chat_service``), shared by the role's models;
    ``running`` is where a TTS stream registers for its model's cancel model (PyTriton).
    """
    if spec.role == "chat":
        return _CHAT_FACTORIES[io.name](instance)
    if io.name == tensors.TTS_STREAM.name:
        return tts_stream_handler(instance, running)
    return _FACTORIES[io.name](instance)


def chat_service(spec: ModelSpec, backend: ChatBackend) -> ChatService:
    interval_ms = float(spec.params.get("stream_interval_ms", 0))
    if interval_ms < 0:
        raise ValueError(f"{spec.name}: stream_interval_ms must be >= 0, not {interval_ms}")
    return ChatService(backend, ChatDefaults.of(spec), interval_ms / 1000)
