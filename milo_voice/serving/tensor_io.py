"""Triton tensors in, a role's batch call, Triton tensors out: for any Triton server.

Each served model gets one handler built around one role instance. A batched model's
handler takes the requests of one call (each its tensors by name, with a leading batch
axis) and returns each one's outputs; a streaming model's handler takes one request and
yields one set of outputs per piece. ``contract.codec`` turns tensors into the contract's
records and back; the handlers know nothing of the server: the PyTriton host binds them,
the stock Triton Python backend (``python_backend``) calls them with its own request
objects' tensors, and tests call them directly.

A request the role refuses (its input error, found by the role's batch call) is answered
in its ``error`` tensor while the rest of its batch is computed normally.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from contract import codec, tensors
from contract.codec import Arrays
from contract.records import Cancelled, CancelRequest, ChatDelta, ChatReply, InputError
from milo_voice.registry import ModelSpec
from milo_voice.roles.chat import ChatBackend, ChatDone, ChatEvent
from milo_voice.roles.generation import TextPiece

if TYPE_CHECKING:
    from milo_voice.roles.stt import SpeechToText
    from milo_voice.roles.translate import Translator
    from milo_voice.roles.tts import TextToSpeech

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Result = TypeVar("Result")
Outputs = Arrays
Inputs = Arrays


@dataclass(frozen=True)
class BatchHandler:
    """A batched model: the requests of one call in, each one's outputs out, computed as one batch.

    ``compute`` is the role's batch call: a result, or the request's ``InputError``, per request.
    """

    io: tensors.ModelIO
    compute: Callable[[list[Any]], Sequence[Any]]

    def __call__(self, requests: Sequence[Inputs]) -> list[Outputs]:
        unpacked = [codec.unpack_requests(self.io, inputs) for inputs in requests]
        answers = iter(answer(self.compute, [row for rows in unpacked for row in rows]))
        return [codec.pack_results(self.io, [next(answers) for _ in rows]) for rows in unpacked]


@dataclass(frozen=True)
class StreamHandler:
    """A decoupled model: one request in, one set of outputs per piece out (a refused request:
    one piece, its error). ``idle`` is the filler piece clients skip, for a server that answers
    several streams in lockstep and must say something for one that has ended."""

    stream: Callable[[Inputs], Iterator[Outputs]]
    idle: Outputs


def answer(compute: Callable[[list[Request]], Sequence[Result]], requests: list[Request | InputError]) -> list[Any]:
    """Each request's result or ``InputError``: the readable requests computed in one batch call
    (``isolated``, so a request that makes the model fail gets its own error, not its batch-mates)."""
    answers: list[Any] = list(requests)
    readable = [i for i, request in enumerate(requests) if not isinstance(request, InputError)]
    if readable:
        results = isolated(compute, [requests[i] for i in readable])
        for i, result in zip(readable, results, strict=True):
            if isinstance(result, ModelFailure):
                cause = result.error
                result = InputError(f"the model could not process this request: {type(cause).__name__}: {cause}")
            answers[i] = result
    return answers


class ModelFailure(Exception):
    """A request that made the model fail when computed alone (``isolated``); ``error`` is why."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def isolated(compute: Callable[[list[Request]], Sequence[Result]], requests: list[Request]) -> list[Any]:
    """``compute(requests)``; if the batch fails, its halves again, down to the requests that fail alone.

    One request's failure inside the model (an input beyond what it can hold) is then that
    request's ``ModelFailure``, not its batch-mates' error. A request alone in its batch gets the
    same answer (whether it was batched with others is the scheduler's chance). When every request
    of a batch of several fails alone, the model itself is failing: the first error is raised, as
    the server's error for the whole call. (A role answers a request it refuses with its
    ``InputError`` in place: that is an answer, passed on as it is.)
    """
    outcome = _bisected(compute, requests)
    failed = [r for r in outcome if isinstance(r, ModelFailure)]
    if len(failed) > 1 and len(failed) == len(outcome):
        raise failed[0].error
    if failed:
        log.warning("%d of %d requests of a batch failed alone; the others were answered", len(failed), len(requests))
    return outcome


def _bisected(compute: Callable[[list[Request]], Sequence[Result]], requests: list[Request]) -> list[Any]:
    try:
        return list(compute(requests))
    except Exception as exc:  # what failed is found by splitting the batch
        if len(requests) == 1:
            return [ModelFailure(exc)]
        # Said, since the halves computed again cost the batch's time once more.
        log.warning("a batch of %d failed (%s: %s): computing its halves", len(requests), type(exc).__name__, exc)
        middle = len(requests) // 2
        return _bisected(compute, requests[:middle]) + _bisected(compute, requests[middle:])


# -- the roles' models ---------------------------------------------------------------


def stt_handler(role: SpeechToText) -> BatchHandler:
    return BatchHandler(tensors.STT, role.transcribe_batch)


def tts_handler(role: TextToSpeech) -> BatchHandler:
    return BatchHandler(tensors.TTS, role.synthesize_batch)


def translate_handler(role: Translator) -> BatchHandler:
    return BatchHandler(tensors.TRANSLATE, role.translate_batch)


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


def cancel_handler(io: tensors.ModelIO, cancel: Callable[[str], bool]) -> BatchHandler:
    """A cancel model (``chat_cancel``, ``tts_cancel``): ``cancelled`` is 1 where ``cancel`` stopped
    a running request by its id."""

    def compute(requests: list[CancelRequest]) -> list[Cancelled]:
        return [Cancelled(int(bool(r.request_id) and cancel(r.request_id))) for r in requests]

    return BatchHandler(io, compute)


def tts_stream_handler(role: TextToSpeech, running: RunningRequests | None = None) -> StreamHandler:
    running = running or RunningRequests()
    io = tensors.TTS_STREAM

    def stream(inputs: Inputs) -> Iterator[Outputs]:
        request = codec.unpack_requests(io, inputs)[0]
        if isinstance(request, InputError):
            yield codec.pack_piece(io, request)
            return
        with running.running(request.request_id) as cancelled:
            sentences = role.stream(request)
            while not cancelled.is_set():  # checked before each sentence is synthesised
                try:
                    speech = next(sentences, None)
                except InputError as refused:  # the role checks the request before its first sentence
                    yield codec.pack_piece(io, refused)
                    return
                if speech is None:
                    return
                yield codec.pack_piece(io, speech)

    return StreamHandler(stream, codec.filler(io))


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

    def __init__(self, backend: ChatBackend, stream_interval_s: float = 0.0) -> None:
        self.backend = backend
        self.stream_interval_s = stream_interval_s
        self.concurrency = int(getattr(backend, "concurrency", 1))
        self.in_flight = 0
        self.running = RunningRequests()
        self._lock = threading.Lock()

    def start(self, inputs: Inputs, emit: Emit, is_cancelled: Callable[[], bool] | None, streaming: bool) -> Any:
        io = tensors.CHAT_STREAM if streaming else tensors.CHAT
        request = codec.unpack_requests(io, inputs)[0]
        if isinstance(request, InputError):
            emit(_chat_outputs(io, request), True)
            return _Ended()
        request_id = request.request_id
        pacer = _StreamPacer(self.stream_interval_s)
        ended = False

        def sink(event: ChatEvent) -> None:
            nonlocal ended
            if isinstance(event, TextPiece):
                text = pacer.piece(event.text)
                if text is not None:
                    emit(_chat_outputs(io, ChatDelta(text)), False)
                return
            with self._lock:
                ended = True
                self.in_flight -= 1
                self.running.remove(request_id)
            if not streaming:
                emit(_chat_outputs(io, event.reply) if isinstance(event, ChatDone) else event.error, True)
            elif isinstance(event, ChatDone):
                reply = event.reply
                last = ChatDelta(
                    pacer.rest(), reply.finish_reason, reply.prompt_tokens, reply.completion_tokens, reply.cached_tokens
                )
                emit(_chat_outputs(io, last), True)
            else:
                held = pacer.rest()
                if held:
                    emit(_chat_outputs(io, ChatDelta(held)), False)
                emit(event.error, True)

        with self._lock:
            self.in_flight += 1
        try:
            started = self.backend.start(request, sink, is_cancelled, pieces=streaming)
        except Exception as exc:  # refused by the role, a full queue, a backend gone
            with self._lock:
                self.in_flight -= 1
            emit(_chat_outputs(io, exc) if isinstance(exc, InputError) else exc, True)
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


def _chat_outputs(io: tensors.ModelIO, answer: ChatReply | ChatDelta | InputError) -> Outputs:
    """``chat``'s outputs (a batch of one) or one ``chat_stream`` piece."""
    return codec.pack_piece(io, answer) if io.streaming else codec.pack_results(io, [answer])


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
    """Two consecutive ``chat_stream`` pieces as one: the texts joined, the later finish reason
    and token counts (only the last piece has them)."""
    io = tensors.CHAT_STREAM
    earlier, later = codec.unpack_result(io, first), codec.unpack_result(io, then)
    return codec.pack_piece(
        io, replace(later, text=earlier.text + later.text, finish_reason=later.finish_reason or earlier.finish_reason)
    )


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
    return cancel_handler(tensors.CHAT_CANCEL, lambda request_id: any([s.cancel(request_id) for s in services]))


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
    return ChatService(backend, interval_ms / 1000)
