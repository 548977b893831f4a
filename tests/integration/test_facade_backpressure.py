"""Priorities and back-pressure under real load: a TTS-only PyTriton host with a small queue.

Premium and standard tokens call the facade at the same time; Triton's dynamic batcher
schedules premium requests first (priority 1 of 2). A flood beyond the bounded queue is
refused with 503 at once, and a request whose client hangs up is cancelled before it
costs the model a batch slot.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis import Redis

from loadtests.processes import tokens_cli
from milo_voice.child_processes import HOST_STOP_S
from milo_voice.registry import model_section
from tests.conftest import REPO, TritonHost, facade_process, free_port, wait_http_ok

pytestmark = pytest.mark.integration

MAX_BATCH = 4
MAX_QUEUE = 32
TEXT = "Tonga soa eto Antananarivo ianareo rehetra, ary misaotra betsaka tamin'ny fiaraha-miasa."
TIERS = {
    "premium": {"priority": 1, "queue_timeout_s": 120, "limits": {"default": "10000/minute"}},
    "standard": {"priority": 2, "queue_timeout_s": 120, "limits": {"default": "10000/minute"}},
    # Gives up on the queue quickly: Triton rejects it once it has waited this long.
    "hasty": {"priority": 2, "queue_timeout_s": 0.2, "limits": {"default": "10000/minute"}},
}


def tts_only_registry(path: Path) -> Path:
    """The real TTS entry of the registry, with a small batch and a small bounded queue."""
    section = model_section("tts")
    section = re.sub(r"max_batch_size = \d+", f"max_batch_size = {MAX_BATCH}", section)
    section = re.sub(r"preferred_batch_sizes = \[[^\]]*\]", f"preferred_batch_sizes = [{MAX_BATCH}]", section)
    section = re.sub(r"max_queue_size = \d+", f"max_queue_size = {MAX_QUEUE}", section)
    path.write_text(section)
    return path


@dataclass(frozen=True)
class Stack:
    facade: str
    host: TritonHost
    premium: str
    standard: str
    hasty: str


@pytest.fixture(scope="module")
def stack(embedded_dir: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("backpressure")
    host = TritonHost(free_port(), free_port(), free_port())
    env = {**os.environ, "MILO_REGISTRY": str(tts_only_registry(workdir / "registry.toml")), "PYTHONUNBUFFERED": "1"}
    env.pop("MILO_CHAT_CLOUD_URL", None)
    log = (workdir / "host.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "pytriton_app", "--http-port", str(host.http), "--grpc-port", str(host.grpc),
         "--metrics-port", str(host.metrics)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        for model in ("tts", "tts_stream"):
            wait_http_ok(f"http://{host.http_url}/v2/models/{model}/ready", 300, process)
        redis = redis_url.rsplit("/", 1)[0] + "/4"
        Redis.from_url(redis).flushdb()
        facade_env = {
            "MILO_AUTH_ENABLED": "true",
            "MILO_REDIS_URL": redis,
            "MILO_TIERS": json.dumps(TIERS),
            "MILO_IP_RATE_LIMIT": "10000/minute",
            "MILO_REQUIRED_MODELS": '["tts"]',
            # gRPC: a cancelled call is cancelled in Triton too (HTTP can only drop the connection).
            "MILO_TRITON_PROTOCOL": "grpc",
            "MILO_TRITON_URL": host.grpc_url,
            "MILO_TRITON_TIMEOUT_S": "300",
        }
        tokens = {
            tier: tokens_cli(facade_env, "create", tier, "--tier", tier, "--scopes", "tts")
            for tier in ("premium", "standard", "hasty")
        }
        with facade_process(host, workdir / "facade.log", **facade_env) as facade:
            yield Stack(facade, host, tokens["premium"], tokens["standard"], tokens["hasty"])
    finally:
        process.terminate()
        process.wait(timeout=HOST_STOP_S)
        log.close()


async def _speak(client: httpx.AsyncClient, stack: Stack, token: str) -> tuple[int, float, httpx.Response]:
    started = time.perf_counter()
    response = await client.post(
        f"{stack.facade}/v1/tts",
        json={"text": TEXT, "language": "mg", "format": "pcm"},
        headers={"Authorization": f"Bearer {token}"},
    )
    return response.status_code, time.perf_counter() - started, response


def triton_counter(stack: Stack, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.host.metrics}/metrics").text
    pattern = rf'^{name}\{{[^}}]*model="tts"[^}}]*\}} ([0-9.e+]+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def facade_counter(stack: Stack, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+]+)$", httpx.get(f"{stack.facade}/metrics").text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_premium_overtakes_standard_inside_triton(stack: Stack) -> None:
    # 24 standard and 8 premium requests sent together, premium spread through the burst.
    tokens = [stack.premium if i % 4 == 3 else stack.standard for i in range(32)]

    async def burst() -> list[tuple[int, float, httpx.Response]]:
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as client:
            return list(await asyncio.gather(*(_speak(client, stack, t) for t in tokens)))

    results = asyncio.run(burst())
    assert [code for code, _, _ in results] == [200] * len(tokens)
    premium = [s for (_, s, _), t in zip(results, tokens, strict=True) if t == stack.premium]
    standard = [s for (_, s, _), t in zip(results, tokens, strict=True) if t == stack.standard]
    p50_premium, p50_standard = statistics.median(premium), statistics.median(standard)
    print(
        f"\nTTS under saturation (batch {MAX_BATCH}, 1 instance, {len(tokens)} at once): "
        f"premium median {p50_premium * 1000:.0f} ms (n={len(premium)}), "
        f"standard median {p50_standard * 1000:.0f} ms (n={len(standard)}), "
        f"ratio {p50_standard / p50_premium:.2f}"
    )
    assert p50_premium < 0.7 * p50_standard


def test_a_full_queue_answers_503_at_once_and_nothing_crashes(stack: Stack) -> None:
    async def flood() -> list[tuple[int, float, httpx.Response]]:
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=128)) as client:
            return list(await asyncio.gather(*(_speak(client, stack, stack.standard) for _ in range(96))))

    results = asyncio.run(flood())
    codes = [code for code, _, _ in results]
    assert set(codes) <= {200, 503}, codes
    busy = [(s, r) for code, s, r in results if code == 503]
    served = [s for code, s, _ in results if code == 200]
    assert busy and served
    for _, response in busy:
        assert response.json()["error"]["code"] == "model_busy"
        assert response.headers["Retry-After"] == "1"
    slowest_refusal = max(s for s, _ in busy)
    print(
        f"\nflood of {len(results)} on a queue of {MAX_QUEUE}: {len(busy)} refused with 503 "
        f"(slowest refusal {slowest_refusal * 1000:.0f} ms), {len(served)} served "
        f"(median {statistics.median(served) * 1000:.0f} ms)"
    )
    assert slowest_refusal < statistics.median(served), "a refusal must not wait for the queue"
    assert facade_counter(stack, "milo_model_busy_total") >= len(busy)
    # Still serving afterwards.
    assert httpx.get(f"{stack.facade}/ready", timeout=30).status_code == 200
    assert asyncio.run(_one(stack))[0] == 200


async def _one(stack: Stack) -> tuple[int, float, httpx.Response]:
    async with httpx.AsyncClient(timeout=300) as client:
        return await _speak(client, stack, stack.premium)


def test_a_client_that_hangs_up_is_cancelled_before_it_reaches_the_model(stack: Stack) -> None:
    cancelled_before = facade_counter(stack, "milo_requests_cancelled_total")
    executed_before = triton_counter(stack, "nv_inference_request_success")

    async def scenario() -> tuple[list[int], bool]:
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as client:
            queue = [asyncio.create_task(_speak(client, stack, stack.standard)) for _ in range(16)]
            await asyncio.sleep(0.3)  # the queue holds work for seconds now
            gave_up = False
            async with httpx.AsyncClient(timeout=0.5) as impatient:
                try:
                    await _speak(impatient, stack, stack.standard)
                except httpx.TimeoutException:
                    gave_up = True
            return [code for code, _, _ in await asyncio.gather(*queue)], gave_up

    codes, gave_up = asyncio.run(scenario())
    assert gave_up and codes == [200] * 16
    time.sleep(1.0)  # let the metrics settle
    assert facade_counter(stack, "milo_requests_cancelled_total") == cancelled_before + 1
    executed = triton_counter(stack, "nv_inference_request_success") - executed_before
    print(f"\n16 patient requests and 1 that hung up: Triton executed {executed:.0f}")
    assert executed == 16, "the abandoned request must not have been run by the model"


def test_a_request_past_its_queue_timeout_is_refused_by_triton(stack: Stack) -> None:
    async def scenario() -> tuple[list[int], tuple[int, float, httpx.Response]]:
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as client:
            queue = [asyncio.create_task(_speak(client, stack, stack.standard)) for _ in range(16)]
            await asyncio.sleep(0.3)
            hasty = await _speak(client, stack, stack.hasty)
            return [code for code, _, _ in await asyncio.gather(*queue)], hasty

    codes, (code, seconds, response) = asyncio.run(scenario())
    assert codes == [200] * 16
    assert code == 503 and response.json()["error"]["code"] == "model_busy", response.text
    print(f"\nqueue timeout 200 ms behind 16 queued requests: refused after {seconds * 1000:.0f} ms")
