"""The blocking client: the asyncio client's calls, run on an event loop of its own.

    >>> from client import MiloTritonClient
    >>> with MiloTritonClient("localhost:8001", protocol="grpc") as milo:
    ...     milo.translate("Manao ahoana daholo ianareo.", "mg", "fr").text

Every call is the ``AsyncMiloTritonClient`` call of the same name, run on a thread that
owns the event loop and the connections; any number of threads may share one client.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from client.calls import CallOptions
from client.triton import AsyncMiloTritonClient, Protocol
from contract import codec, tensors

P = ParamSpec("P")
R = TypeVar("R")


class _Blocking(Generic[P, R]):
    """An ``AsyncMiloTritonClient`` call as a blocking method of ``MiloTritonClient``."""

    def __init__(self, call: Callable[Concatenate[AsyncMiloTritonClient, P], Awaitable[R]]) -> None:
        self.call = call

    @overload
    def __get__(self, client: None, owner: type) -> _Blocking[P, R]: ...
    @overload
    def __get__(self, client: MiloTritonClient, owner: type) -> Callable[P, R]: ...
    def __get__(self, client: MiloTritonClient | None, owner: type) -> Any:
        if client is None:
            return self

        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            return client.run(self.call(client.calls, *args, **kwargs))  # type: ignore[arg-type]

        return run


class _BlockingStream(Generic[P, R]):
    """An ``AsyncMiloTritonClient`` stream as a blocking iterator; closing it early ends the stream."""

    def __init__(self, call: Callable[Concatenate[AsyncMiloTritonClient, P], AsyncIterator[R]]) -> None:
        self.call = call

    @overload
    def __get__(self, client: None, owner: type) -> _BlockingStream[P, R]: ...
    @overload
    def __get__(self, client: MiloTritonClient, owner: type) -> Callable[P, Iterator[R]]: ...
    def __get__(self, client: MiloTritonClient | None, owner: type) -> Any:
        if client is None:
            return self

        def iterate(*args: P.args, **kwargs: P.kwargs) -> Iterator[R]:
            pieces = self.call(client.calls, *args, **kwargs)
            try:
                while True:
                    try:
                        yield client.run(anext(pieces))  # type: ignore[arg-type]
                    except StopAsyncIteration:
                        return
            finally:
                if not client.closed:
                    client.run(pieces.aclose())  # type: ignore[attr-defined]

        return iterate


class MiloTritonClient:
    """Blocking calls to one Triton server; the arguments are ``AsyncMiloTritonClient``'s."""

    def __init__(
        self,
        url: str = "localhost:8000",
        protocol: Protocol = "http",
        grpc_url: str | None = None,
        timeout_s: float = 60.0,
        options: CallOptions | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="milo-client", daemon=True)
        self._thread.start()

        async def connect() -> AsyncMiloTritonClient:  # the connections belong to the loop's thread
            return AsyncMiloTritonClient(url, protocol, grpc_url, timeout_s)

        self.calls = self.run(connect())
        if options is not None:
            self.calls = self.calls.with_options(options)
        self.url = url

    @property
    def closed(self) -> bool:
        return self._loop.is_closed()

    def with_options(self, options: CallOptions) -> MiloTritonClient:
        """A view whose calls carry ``options``; it shares the connections (do not close it)."""
        view = copy.copy(self)
        view.calls = self.calls.with_options(options)
        return view

    def run(self, call: Coroutine[Any, Any, R]) -> R:
        """Run ``call`` on the client's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.run(self.calls.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> MiloTritonClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    is_live = _Blocking(AsyncMiloTritonClient.is_live)
    is_model_ready = _Blocking(AsyncMiloTritonClient.is_model_ready)
    transcribe = _Blocking(AsyncMiloTritonClient.transcribe)
    synthesize = _Blocking(AsyncMiloTritonClient.synthesize)
    translate = _Blocking(AsyncMiloTritonClient.translate)
    chat = _Blocking(AsyncMiloTritonClient.chat)
    call = _Blocking(AsyncMiloTritonClient.call)
    cancel = _Blocking(AsyncMiloTritonClient.cancel)
    chat_stream = _BlockingStream(AsyncMiloTritonClient.chat_stream)
    synthesize_stream = _BlockingStream(AsyncMiloTritonClient.synthesize_stream)

    def infer_tensors(self, io: tensors.ModelIO, inputs: codec.Arrays) -> codec.Arrays:
        """Raw tensors to a model (for callers that test what a server does with malformed input)."""
        return self.run(self.calls.infer_tensors(io, inputs, self.calls.options))
