"""The callables PyTriton binds: the shared tensor handlers, wrapped for PyTriton.

``milo_voice.serving.tensor_io`` turns tensors into role calls and back; this module only
adapts those handlers to PyTriton's calling conventions: ``@batch`` for batched models
(after each request gets its optional inputs' defaults, so that ``@batch`` sees one set
of keys) and an async generator for decoupled ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
from pytriton.decorators import batch

from milo_voice.serving.tensor_io import BatchHandler, Handler, Outputs, StreamHandler, with_defaults


def batched_infer(handler: BatchHandler) -> Callable[..., Any]:
    @batch
    def infer(**inputs: np.ndarray) -> Outputs:
        return handler.compute(inputs)

    def with_optional_inputs(requests: list[Any]) -> Any:
        for request in requests:
            for name, value in with_defaults(dict(request.items()), handler.defaults).items():
                if name not in request:
                    request[name] = value
        return infer(requests)

    return with_optional_inputs


def streamed_infer(handler: StreamHandler) -> Callable[..., Any]:
    return _interleaved_streams(handler.stream, handler.idle)


def infer_callable(handler: Handler) -> Callable[..., Any]:
    return batched_infer(handler) if isinstance(handler, BatchHandler) else streamed_infer(handler)


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
    a stream waiting for the instance (llama.cpp decodes one conversation at a time)
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
