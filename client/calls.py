"""The typed calls of every Milo Voice model, written once over any transport.

``ModelCalls`` packs a request record with ``contract.codec``, hands the tensors to its
transport (``infer_tensors``, ``stream_tensors``) and unpacks the result record. One
Triton server (``AsyncMiloTritonClient``) and a pool of them (``TritonPool``) are two
transports under the same calls; the blocking client runs them on a thread of its own.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Self

import numpy as np

from contract import codec, tensors
from contract.records import (
    AUTO,
    CancelRequest,
    ChatDelta,
    ChatReply,
    ChatRequest,
    Speech,
    SttRequest,
    Transcription,
    TranslateRequest,
    Translation,
    TtsRequest,
)

log = logging.getLogger(__name__)
# How long a cancel call may take (it is sent when a call is given up, in the background).
CANCEL_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True)
class CallOptions:
    """How Triton schedules a request: its priority level and how long it may wait in the queue.

    ``priority`` 0 means the model's default level; 1 is served first. A request still
    queued after ``queue_timeout_us`` is rejected by Triton (the model must allow the
    override, which the registry's queue policy does).
    """

    priority: int = 0
    queue_timeout_us: int | None = None

    def later(self, levels: int) -> CallOptions:
        """The same, ``levels`` priority levels later (the model's default level stays as it is)."""
        return self if self.priority == 0 else dataclasses.replace(self, priority=self.priority + levels)


@dataclasses.dataclass
class _Rotation:
    """What the calls keep of their servers, one record shared by every view of a transport (a
    view is a shallow copy: an attribute the calls set on it would be the view's alone)."""

    # How many times a server came back into rotation: it may serve other weights since.
    restarts: int = 0
    # Calls sent so far: a pool takes its servers in turn by it where they are as busy.
    turns: int = 0


class ModelCalls:
    """The models' typed calls; a subclass is the transport that carries their tensors."""

    options: CallOptions = CallOptions()

    def __init__(self) -> None:
        self._background: set[asyncio.Task[Any]] = set()
        self._rotation = _Rotation()

    @property
    def restarts(self) -> int:
        return self._rotation.restarts

    @restarts.setter
    def restarts(self, value: int) -> None:
        self._rotation.restarts = value

    # -- the transport -----------------------------------------------------------------

    async def infer_tensors(self, io: tensors.ModelIO, inputs: codec.Arrays, options: CallOptions) -> codec.Arrays:
        """One request to a non-streaming model; its output tensors by name."""
        raise NotImplementedError

    def stream_tensors(
        self, io: tensors.ModelIO, inputs: codec.Arrays, options: CallOptions
    ) -> AsyncIterator[codec.Arrays]:
        """The responses of a decoupled model as they arrive; closing it early ends the call."""
        raise NotImplementedError

    async def cancel(self, io: tensors.ModelIO, request_id: str) -> bool:
        """Call the cancel model ``io`` for ``request_id``; False where nothing was stopped, or where
        the server has no cancel models (a stock tritonserver sees a cancelled request itself)."""
        try:
            inputs = codec.pack_request(io, CancelRequest(request_id))
            outputs = await asyncio.wait_for(self.infer_tensors(io, inputs, CallOptions()), CANCEL_TIMEOUT_S)
        except Exception as exc:  # best effort, often in the background: it must never raise
            log.debug("%s of %s not served: %s", io.name, request_id, exc)
            return False
        return bool(codec.unpack_result(io, outputs).cancelled)

    # -- views and lifetime --------------------------------------------------------------

    def with_options(self, options: CallOptions) -> Self:
        """A view whose calls carry ``options``; it shares the connections and what is learnt of the
        servers (do not close it)."""
        view = copy.copy(self)
        view.options = options
        return view

    async def wait_background(self) -> None:
        """Wait for the cancel calls still on their way (on close)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- the calls -------------------------------------------------------------------------

    async def call(self, io: tensors.ModelIO, request: Any, priority: int | None = None) -> Any:
        """``request`` (``io.request``) to ``io``; its result (``io.result``), or the model's ``InputError``."""
        options = self.options if priority is None else dataclasses.replace(self.options, priority=priority)
        return codec.unpack_result(io, await self.infer_tensors(io, codec.pack_request(io, request), options))

    async def stream(self, io: tensors.ModelIO, request: Any) -> AsyncIterator[Any]:
        """``request`` to the decoupled model ``io``: its pieces as they come (filler pieces skipped)."""
        async for outputs in self.stream_tensors(io, codec.pack_request(io, request), self.options):
            if not codec.is_filler(io, outputs):
                yield codec.unpack_result(io, outputs)

    async def transcribe(self, audio: np.ndarray, language: str = AUTO, priority: int | None = None) -> Transcription:
        """``audio``: mono float samples at 16 kHz."""
        request = SttRequest(np.asarray(audio, dtype=np.float32).ravel(), language)
        return await self.call(tensors.STT, request, priority)  # type: ignore[no-any-return]

    async def synthesize(self, text: str, language: str, speed: float = 1.0, priority: int | None = None) -> Speech:
        return await self.call(tensors.TTS, TtsRequest(text, language, speed), priority)  # type: ignore[no-any-return]

    async def translate(self, text: str, source: str, target: str, priority: int | None = None) -> Translation:
        request = TranslateRequest(text, source, target)
        return await self.call(tensors.TRANSLATE, request, priority)  # type: ignore[no-any-return]

    async def chat(self, request: ChatRequest, priority: int | None = None, model: str = "chat") -> ChatReply:
        """A whole reply. ``model``: "chat" (local) or "chat_cloud" (the OpenAI-compatible backend,
        where served). A call cancelled midway (its caller left) stops the generation on the server."""
        request = _with_request_id(request)
        try:
            return await self.call(_named(tensors.CHAT, model), request, priority)  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            self._in_background(self.cancel(_named(tensors.CHAT_CANCEL, f"{model}_cancel"), request.request_id))
            raise

    async def chat_stream(self, request: ChatRequest, model: str = "chat") -> AsyncIterator[ChatDelta]:
        """The reply piece by piece; closing the iterator early stops the generation on the server."""
        request = _with_request_id(request)
        finished = False
        try:
            async for delta in self.stream(_named(tensors.CHAT_STREAM, f"{model}_stream"), request):
                finished = bool(delta.finish_reason)
                yield delta
        finally:
            if not finished:
                self._in_background(self.cancel(_named(tensors.CHAT_CANCEL, f"{model}_cancel"), request.request_id))

    async def synthesize_stream(self, text: str, language: str, speed: float = 1.0) -> AsyncIterator[Speech]:
        """Audio sentence by sentence; closing the iterator early stops the synthesis on the server."""
        request = TtsRequest(text, language, speed, request_id=uuid.uuid4().hex)
        finished = False
        try:
            async for speech in self.stream(tensors.TTS_STREAM, request):
                yield speech
            finished = True
        finally:
            if not finished:
                self._in_background(self.cancel(tensors.TTS_CANCEL, request.request_id))

    def _in_background(self, call: Coroutine[Any, Any, bool]) -> None:
        # The caller is being cancelled or closed: it must not wait for this call.
        task = asyncio.get_running_loop().create_task(call)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _with_request_id(request: ChatRequest) -> ChatRequest:
    return request if request.request_id else dataclasses.replace(request, request_id=uuid.uuid4().hex)


def _named(io: tensors.ModelIO, name: str) -> tensors.ModelIO:
    """The same tensors under another served name (the cloud chat backend)."""
    return io if io.name == name else dataclasses.replace(io, name=name)
