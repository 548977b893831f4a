"""The client's errors when no Triton answers: unavailable, never a raw socket error."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from client import AsyncMiloTritonClient, MiloTritonClient, TritonUnavailableError
from tests.conftest import free_port


def test_sync_client_without_server() -> None:
    with MiloTritonClient(f"127.0.0.1:{free_port()}", timeout_s=5) as client:
        assert not client.is_live()
        with pytest.raises(TritonUnavailableError, match="cannot reach Triton"):
            client.translate("Salama", "mg", "fr")


def test_async_client_without_server() -> None:
    async def run() -> None:
        async with AsyncMiloTritonClient(f"127.0.0.1:{free_port()}", timeout_s=5) as client:
            assert not await client.is_model_ready("stt")
            with pytest.raises(TritonUnavailableError):
                await client.transcribe(np.zeros(1600, dtype=np.float32))

    asyncio.run(run())


def test_a_calls_deadline_is_its_queue_timeout_and_then_its_compute_budget() -> None:
    from client.triton import deadline_s

    assert deadline_s(60.0, None) == 60.0
    assert deadline_s(60.0, 120_000_000) == 180.0


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_server_that_never_answers_is_not_ready_within_the_health_bound(protocol: str) -> None:
    """A Triton that accepts the connection and then says nothing (one being killed) is answered
    "not live, not ready" within ``HEALTH_TIMEOUT_S``: the facade's /ready and the pool's probe
    must not wait on it."""
    from client.triton import HEALTH_TIMEOUT_S

    async def run() -> float:
        silent: list[asyncio.StreamWriter] = []

        async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            silent.append(writer)  # held open, never written to

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with AsyncMiloTritonClient(f"127.0.0.1:{port}", protocol=protocol, timeout_s=60) as client:
                started = asyncio.get_running_loop().time()
                answers = await asyncio.gather(
                    client.is_live(), client.is_server_ready(), client.is_model_ready("translate")
                )
                assert answers == [False, False, False]
                return asyncio.get_running_loop().time() - started
        finally:
            for writer in silent:
                writer.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(run()) < HEALTH_TIMEOUT_S + 2
