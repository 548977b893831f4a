"""The callables PyTriton binds: the shared tensor handlers, wrapped for PyTriton.

``milo_voice.serving.tensor_io`` turns tensors into role calls and back; this module only
adapts those handlers to PyTriton's calling conventions: a call's requests as a list for
batched models (each request's own tensors, whatever optional inputs it sent), an async
generator for decoupled ones, and for the chat models, which decode many requests at once,
per-request calls that wait on the role's events.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np

from milo_voice.serving.batch_metrics import BatchClock, prometheus_batch_report
from milo_voice.serving.tensor_io import (
    BatchHandler,
    GenerationHandler,
    Handler,
    Outputs,
    StreamHandler,
    join_queued,
)


def batched_infer(handler: BatchHandler, model: str | None = None) -> Callable[..., Any]:
    """``model``: the Triton model's name, under which its batches are timed (``batch_metrics``)."""
    clock = BatchClock(handler, prometheus_batch_report(model) if model else None)

    def infer(requests: list[Any]) -> list[Outputs]:
        with clock.timing() as timed:
            return timed([dict(request.items()) for request in requests])

    return infer


def streamed_infer(handler: StreamHandler) -> Callable[..., Any]:
    return _interleaved_streams(handler.stream, handler.idle)


def infer_callable(handler: Handler, model: str | None = None) -> Callable[..., Any]:
    if isinstance(handler, GenerationHandler):
        return generation_stream_infer(handler) if handler.streaming else generation_infer(handler)
    return batched_infer(handler, model) if isinstance(handler, BatchHandler) else streamed_infer(handler)


def generation_infer(handler: GenerationHandler) -> Callable[..., Any]:
    """``chat``: each request of the call started at once, the call answered when all have ended.

    PyTriton answers a non-decoupled call only as a whole, so the host binds one such
    callable per request the role decodes at once, and Triton's queue (priorities, bounds)
    feeds them one request each.
    """

    def infer(requests: list[Any]) -> list[Outputs]:
        results: list[Outputs | Exception | None] = [None] * len(requests)
        ended = [threading.Event() for _ in requests]

        def emit_to(i: int) -> Callable[[Outputs | Exception, bool], None]:
            def emit(outputs: Outputs | Exception, final: bool) -> None:
                if final:
                    results[i] = outputs
                    ended[i].set()

            return emit

        started = [handler.start(dict(r.items()), emit_to(i), None) for i, r in enumerate(requests)]
        try:
            for event in ended:
                event.wait()
        finally:
            for request in started:
                request.cancel()  # a no-op for the ones that ended
        for result in results:
            if isinstance(result, Exception):
                raise result
        return [result for result in results if isinstance(result, dict)]

    return infer


def generation_stream_infer(handler: GenerationHandler) -> Callable[..., Any]:
    """``chat_stream``: an async generator per call, so any number of streams run together.

    The role's thread hands each piece to this loop; nothing here blocks a thread while a
    stream waits for its next token. Pieces that arrive while this loop is busy go out
    together, joined (``handler.merge``). A request whose stream has ended, or has nothing
    new, answers filler pieces (no text, no finish reason) while the call's others go on.
    """

    merge = handler.merge
    if merge is None:
        raise ValueError("a streamed generation handler needs merge, to join the pieces that queue up")

    async def infer(requests: list[Any]) -> AsyncIterator[list[Outputs]]:
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[tuple[int, Outputs | Exception, bool]] = asyncio.Queue()

        def emit_to(i: int) -> Callable[[Outputs | Exception, bool], None]:
            def emit(outputs: Outputs | Exception, final: bool) -> None:
                loop.call_soon_threadsafe(pieces.put_nowait, (i, outputs, final))

            return emit

        started = [handler.start(dict(r.items()), emit_to(i), None) for i, r in enumerate(requests)]
        open_streams = set(range(len(requests)))
        try:
            while open_streams:
                waiting = [await pieces.get()]
                while not pieces.empty():
                    waiting.append(pieces.get_nowait())
                ready: dict[int, Outputs] = {}
                for i, outputs, final in join_queued(waiting, merge):
                    if isinstance(outputs, Exception):
                        raise outputs
                    if final:
                        open_streams.discard(i)
                    ready[i] = outputs
                any_piece = next(iter(ready.values()))
                yield [ready.get(j) or _idle(any_piece) for j in range(len(requests))]
        finally:
            # Also when the call is abandoned: the role frees the slot at its next step.
            for request in started:
                request.cancel()

    return infer


def _idle(like: Outputs) -> Outputs:
    return {name: _filler(value) for name, value in like.items()}


def _filler(value: np.ndarray) -> np.ndarray:
    return np.full_like(value, b"") if value.dtype == np.object_ else np.zeros_like(value)


def _interleaved_streams(
    stream_one: Callable[[dict[str, np.ndarray]], Iterator[Outputs]], idle: Outputs
) -> Callable[..., Any]:
    """A decoupled callable: each yield answers every request of the call at once.

    Triton usually hands a decoupled model one request at a time; when it hands
    several, a request whose stream has ended answers ``idle`` (filler) pieces until
    the others end, which clients skip.

    PyTriton runs callables on one event-loop thread per model and interleaves
    concurrent calls there. Each step of a stream runs in a worker thread, so the loop
    never blocks; and the streams of one instance take turns at an asyncio gate, because
    a stream waiting for the instance (a role that computes one request at a time)
    inside a worker thread would hold that thread: enough of them fill the loop's small
    pool, and the stream that holds the instance can no longer go on.
    """
    gate = asyncio.Lock()

    async def infer(requests: list[dict[str, np.ndarray]]) -> AsyncIterator[list[Outputs]]:
        async with gate:
            streams = [stream_one(r) for r in requests]
            try:
                while True:
                    pieces = [await asyncio.to_thread(next, stream, None) for stream in streams]
                    if all(piece is None for piece in pieces):
                        return
                    yield [piece if piece is not None else idle for piece in pieces]
            finally:
                # Also on cancellation (client gone): closing releases the role instance.
                for stream in streams:
                    await asyncio.to_thread(stream.close)

    return infer
