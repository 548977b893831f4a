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
