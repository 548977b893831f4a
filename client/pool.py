"""Client-side load balancing over several Triton servers, with health checks and failover.

``TritonPool`` is a transport of ``ModelCalls`` (the same typed calls as one server's
``AsyncMiloTritonClient``) that spreads them over several servers: each call goes to the
healthy server with the fewest calls in flight (ties taken in turn). A background probe
asks every server ``/v2/health/ready`` and takes a server out of rotation when it stops
answering, and back when it answers again; a call that finds a server unreachable marks
it down at once instead of waiting for the probe. A cancel goes to every server.

Inference has no side effects, so a call that fails because its server is unreachable,
or went away while answering, is sent again to another server. A full queue (busy) also
moves on to another server, without marking the first one down. A stream is sent again
only if it had not yet yielded anything: a stream cut midway cannot be replayed without
repeating what its client already has. Timeouts are not retried (the work may still be
running), and neither are refused inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from client.calls import CallOptions, ModelCalls
from client.errors import TritonBusyError, TritonUnavailableError
from client.triton import AsyncMiloTritonClient, Protocol
from contract import codec, tensors

log = logging.getLogger(__name__)


@dataclass
class Endpoint:
    """One Triton server of the pool and what the pool knows of it."""

    client: AsyncMiloTritonClient
    healthy: bool = True
    in_flight: int = 0
    served: int = 0
    failures: int = 0
    last_error: str = ""
    changed_at: float = 0.0

    @property
    def url(self) -> str:
        return self.client.url

    def status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "in_flight": self.in_flight,
            "served": self.served,
            "failures": self.failures,
            "last_error": self.last_error or None,
        }


OnRetry = Callable[[Endpoint, Exception], None]


class TritonPool(ModelCalls):
    """The calls of ``ModelCalls``, spread over several Triton servers."""

    def __init__(
        self,
        urls: Sequence[str],
        protocol: Protocol = "http",
        grpc_urls: Sequence[str | None] | None = None,
        timeout_s: float = 60.0,
        probe_interval_s: float = 2.0,
        on_retry: OnRetry | None = None,
        access_key: str | None = None,
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError("a Triton pool needs at least one server URL")
        grpc = list(grpc_urls or [None] * len(urls))
        if len(grpc) != len(urls):
            raise ValueError(f"{len(urls)} Triton URLs but {len(grpc)} gRPC URLs: give one per server or none")
        self.endpoints = [
            Endpoint(AsyncMiloTritonClient(url, protocol, g, timeout_s, access_key))
            for url, g in zip(urls, grpc, strict=True)
        ]
        self.probe_interval_s = probe_interval_s
        self._on_retry = on_retry
        self._probe: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Probe every server now, then keep probing in the background."""
        await self.probe()
        self._probe = asyncio.create_task(self._probe_forever())

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.wait_background()
        for endpoint in self.endpoints:
            await endpoint.client.close()

    async def __aenter__(self) -> TritonPool:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # -- health ----------------------------------------------------------------------

    async def probe(self) -> None:
        results = await asyncio.gather(*(e.client.is_server_ready() for e in self.endpoints))
        for endpoint, ready in zip(self.endpoints, results, strict=True):
            if ready:
                self._mark_up(endpoint)
            else:
                self._mark_down(endpoint, "not ready (/v2/health/ready)")

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)
            try:
                await self.probe()
            except Exception:  # the probe must outlive any one failure
                log.exception("Triton health probe failed")

    def _mark_down(self, endpoint: Endpoint, reason: str) -> None:
        endpoint.failures += 1
        endpoint.last_error = reason
        if endpoint.healthy:
            endpoint.healthy, endpoint.changed_at = False, time.time()
            log.warning("Triton at %s out of rotation: %s", endpoint.url, reason)

    def _mark_up(self, endpoint: Endpoint) -> None:
        if not endpoint.healthy:
            endpoint.healthy, endpoint.changed_at = True, time.time()
            self.restarts += 1
            log.info("Triton at %s back in rotation", endpoint.url)

    @property
    def degraded(self) -> bool:
        return any(not e.healthy for e in self.endpoints)

    def status(self) -> list[dict[str, Any]]:
        return [e.status() for e in self.endpoints]

    async def is_live(self) -> bool:
        return any(await asyncio.gather(*(e.client.is_live() for e in self.endpoints)))

    async def is_model_ready(self, model: str) -> bool:
        """Ready on at least one server in rotation."""
        healthy = [e for e in self.endpoints if e.healthy] or self.endpoints
        return any(await asyncio.gather(*(e.client.is_model_ready(model) for e in healthy)))

    # -- routing ---------------------------------------------------------------------

    def _pick(self, tried: set[int]) -> Endpoint | None:
        """The healthy server with the fewest calls in flight, ties taken in turn.

        When every untried server is marked down, one is tried anyway: it may be back
        before the next probe, and failing again costs one connection attempt.
        """
        untried = [e for e in self.endpoints if id(e) not in tried]
        candidates = [e for e in untried if e.healthy] or untried
        if not candidates:
            return None
        self._rotation.turns += 1  # in the record every caller's view shares
        turn = self._rotation.turns
        order = {id(e): (i - turn) % len(self.endpoints) for i, e in enumerate(self.endpoints)}
        return min(candidates, key=lambda e: (e.in_flight, order[id(e)]))

    def _failed(self, endpoint: Endpoint, exc: TritonUnavailableError) -> None:
        if not isinstance(exc, TritonBusyError):
            self._mark_down(endpoint, str(exc))
        if self._on_retry is not None:
            self._on_retry(endpoint, exc)

    # -- the transport -----------------------------------------------------------------

    async def infer_tensors(self, io: tensors.ModelIO, inputs: codec.Arrays, options: CallOptions) -> codec.Arrays:
        tried: set[int] = set()
        error: TritonUnavailableError | None = None
        while (endpoint := self._pick(tried)) is not None:
            tried.add(id(endpoint))
            endpoint.in_flight += 1
            try:
                result = await endpoint.client.infer_tensors(io, inputs, options)
            except TritonUnavailableError as exc:
                error = exc
                self._failed(endpoint, exc)
                continue
            finally:
                endpoint.in_flight -= 1
            endpoint.served += 1
            self._mark_up(endpoint)
            return result
        raise error or TritonUnavailableError("no Triton server configured")

    async def stream_tensors(
        self, io: tensors.ModelIO, inputs: codec.Arrays, options: CallOptions
    ) -> AsyncIterator[codec.Arrays]:
        tried: set[int] = set()
        error: TritonUnavailableError | None = None
        while (endpoint := self._pick(tried)) is not None:
            tried.add(id(endpoint))
            started = False
            endpoint.in_flight += 1
            try:
                async for piece in endpoint.client.stream_tensors(io, inputs, options):
                    started = True
                    yield piece
            except TritonUnavailableError as exc:
                self._failed(endpoint, exc)
                if started:
                    raise
                error = exc
                continue
            finally:
                endpoint.in_flight -= 1
            endpoint.served += 1
            self._mark_up(endpoint)
            return
        raise error or TritonUnavailableError("no Triton server configured")

    async def cancel(self, io: tensors.ModelIO, request_id: str) -> bool:
        """Sent to every server in rotation: the pool does not keep which one runs a request, and a
        server that never saw it keeps the id a while, harmlessly."""
        healthy = [e for e in self.endpoints if e.healthy] or self.endpoints
        return any(await asyncio.gather(*(e.client.cancel(io, request_id) for e in healthy)))
