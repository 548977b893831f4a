"""How ``TritonPool`` chooses a server (the fewest calls in flight, ties taken in turn), and what
the views of a transport share.

The facade calls through a view of the pool per caller (``with_options``, a shallow copy), so
what the calls keep between them (the turn, the servers back in rotation, the streams' channel)
must be shared by every view. Each server here is a recording transport in place of the pool's
client (no Triton: the choice is the pool's alone).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from client import AsyncMiloTritonClient, CallOptions, TritonPool
from contract import codec, tensors
from tests.conftest import free_port


class RecordingServer:
    """Answers every call after ``delay_s``; counts the calls it was given."""

    def __init__(self, url: str, delay_s: float = 0.0) -> None:
        self.url = url
        self.delay_s = delay_s
        self.calls = 0

    async def infer_tensors(self, io: tensors.ModelIO, inputs: codec.Arrays, options: CallOptions) -> codec.Arrays:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        return {}

    async def stream_tensors(
        self, io: tensors.ModelIO, inputs: codec.Arrays, options: CallOptions
    ) -> AsyncIterator[codec.Arrays]:
        self.calls += 1
        for _ in range(2):
            await asyncio.sleep(self.delay_s)
            yield {}


async def pool_of(*servers: RecordingServer) -> TritonPool:
    pool = TritonPool([s.url for s in servers], probe_interval_s=3600)
    for endpoint, server in zip(pool.endpoints, servers, strict=True):
        await endpoint.client.close()  # the real clients are never used here
        endpoint.client = server  # type: ignore[assignment]
    return pool


async def test_calls_one_at_a_time_through_callers_views_take_the_servers_in_turn() -> None:
    servers = [RecordingServer(f"127.0.0.1:{port}") for port in (1, 2, 3)]
    pool = await pool_of(*servers)
    chosen = []
    for priority in [0, 1, 2] * 4:  # a view per call, as the facade makes one per caller
        view = pool.with_options(CallOptions(priority=priority))
        before = [s.calls for s in servers]
        await view.infer_tensors(tensors.TRANSLATE, {}, view.options)
        chosen.append(next(i for i, s in enumerate(servers) if s.calls > before[i]))
    # Each call finds every server idle: the turn decides, and it goes round all three.
    assert chosen[:3] in ([0, 1, 2], [1, 2, 0], [2, 0, 1])
    assert chosen == chosen[:3] * 4
    assert [e.served for e in pool.endpoints] == [4, 4, 4]


async def test_the_server_with_fewer_calls_in_flight_takes_the_next() -> None:
    slow, quick = RecordingServer("127.0.0.1:1", delay_s=0.2), RecordingServer("127.0.0.1:2", delay_s=0.01)
    pool = await pool_of(slow, quick)

    async def caller() -> None:
        for _ in range(5):
            view = pool.with_options(CallOptions())
            await view.infer_tensors(tensors.TRANSLATE, {}, view.options)

    await asyncio.gather(*(caller() for _ in range(2)))
    served = Counter({e.url: e.served for e in pool.endpoints})
    # Two callers: while one waits on the slow server, the other's calls all go to the quick one.
    assert served["127.0.0.1:2"] > served["127.0.0.1:1"] >= 1, served
    assert sum(served.values()) == 10


@pytest.mark.parametrize("way", ["call", "stream"])
async def test_a_server_back_in_rotation_through_a_callers_view_counts_for_every_view(way: str) -> None:
    """The facade keys its translation cache by the restarts it has seen: a server found back by
    one caller's call or stream (before the probe) may serve other weights, for every caller."""
    server = RecordingServer("127.0.0.1:1")
    pool = await pool_of(server)
    pool._mark_down(pool.endpoints[0], "refused")
    view = pool.with_options(CallOptions(priority=1))
    if way == "call":
        await view.infer_tensors(tensors.TRANSLATE, {}, view.options)
    else:
        assert len([piece async for piece in view.stream_tensors(tensors.TTS_STREAM, {}, view.options)]) == 2
    assert pool.endpoints[0].healthy
    assert pool.restarts == view.restarts == pool.with_options(CallOptions()).restarts == 1


async def test_a_stream_through_a_view_opens_the_channel_its_client_closes() -> None:
    client = AsyncMiloTritonClient(f"127.0.0.1:{free_port()}")
    view = client.with_options(CallOptions(priority=1))
    opened = view._streams()  # what a stream through the view opens, lazily
    assert client._streams() is opened
    await client.close()
    assert view._streams() is not opened  # closed with the client: the next stream opens anew
    await client.close()
