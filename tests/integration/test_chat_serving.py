"""Chat served with continuous batching, on both servers: a chat-only host with two slots.

Through Triton and the real facade (uvicorn): streams interleave with other requests,
requests beyond the slots wait in Triton's queue where priorities apply and a full queue
answers busy, a client that leaves frees its slot, and the host's metrics port shows the
engine's series beside Triton's. The registry serves the benchmarks' fixed-length chat role, so
every reply runs to its ``max_tokens``: request lengths are known.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from client import AsyncMiloTritonClient, CallOptions, ChatMessage, ChatRequest, MiloTritonClient, TritonBusyError
from loadtests.bench import fixed_lengths
from milo_voice.registry import load_registry, model_section
from milo_voice.triton_repository import write_configs
from milo_voice.weights import identity
from tests.conftest import TritonHost, facade_process, free_port, running_host

pytestmark = pytest.mark.integration

SLOTS = 2
QUEUE = 2
MESSAGES = [ChatMessage("user", "Tell me about Madagascar.")]


def question(**options: Any) -> ChatRequest:
    return ChatRequest(MESSAGES, **options)


def chat_only_registry(path: Path) -> Path:
    """The registry's real chat entry with two slots, a queue of two and replies of fixed length."""
    section = model_section("chat")
    section = re.sub(r"max_queue_size = \d+", f"max_queue_size = {QUEUE}", section)
    section = re.sub(r"params = \{[^}]*\}", f"params = {{ n_ctx = 1024, slots = {SLOTS} }}", section)
    section = section.replace("[models.chat]\n", f'[models.chat]\nimplementation = "{fixed_lengths.CHAT}"\n', 1)
    path.write_text(section)
    return path


@dataclass(frozen=True)
class ChatStack:
    host: TritonHost
    facade: str

    @property
    def stream_model(self) -> str:
        """Which engine answers streams: the stock server runs chat_stream in a process of its own."""
        return "chat" if self.host.server == "pytriton" else "chat_stream"


@pytest.fixture(scope="module", params=["pytriton", "tritonserver"])
def stack(request: pytest.FixtureRequest, embedded_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    server = request.param
    workdir = tmp_path_factory.mktemp(f"chat-{server}")
    repository = workdir / "repository"
    repository.mkdir()
    registry = chat_only_registry(repository / "registry.toml")
    write_configs(load_registry(registry), repository)  # the stock server's config.pbtxt files
    host = TritonHost(free_port(), free_port(), free_port(), models=("chat", "chat_stream"), server=server)
    ports = ["--http-port", str(host.http), "--grpc-port", str(host.grpc), "--metrics-port", str(host.metrics)]
    if server == "pytriton":
        command = [sys.executable, "-m", "pytriton_app", *ports]
    else:
        command = [sys.executable, "-m", "milo_voice.serving.tritonserver", "--workdir", str(workdir), *ports]
    env = {"MILO_PROFILE": "embedded", "MILO_REGISTRY": str(registry), "MILO_CHAT_CLOUD_URL": ""}
    with running_host(host, command, workdir / "host.log", **env) as ready:
        facade_env = {"MILO_REQUIRED_MODELS": '["chat"]', "MILO_CHAT_N_CTX": "1024"}
        with facade_process(ready, workdir / "facade.log", **facade_env) as url:
            yield ChatStack(ready, url)


def metrics(host: TritonHost) -> dict[str, float]:
    """The host's metrics page, summed by series name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{host.metrics}/metrics", timeout=10) as response:
        page = response.read().decode()
    values: dict[str, float] = {}
    for line in page.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = values.get(name, 0.0) + float(value)
    return values


def engine(host: TritonHost, series: str, model: str) -> float:
    return metrics(host).get(f'milo_chat_engine_{series}{{model="{model}"}}', -1.0)


def wait_until(check: object, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_the_metrics_port_has_the_engines_series_beside_tritons(stack: ChatStack) -> None:
    page = metrics(stack.host)
    assert any(name.startswith("nv_inference_count") for name in page)
    assert engine(stack.host, "slots", "chat") == SLOTS
    assert engine(stack.host, "slots", stack.stream_model) == SLOTS
    with MiloTritonClient(stack.host.http_url) as milo:
        before = engine(stack.host, "generated_tokens_total", "chat")
        assert milo.chat(question(max_tokens=7)).completion_tokens == 7
    assert engine(stack.host, "generated_tokens_total", "chat") == before + 7
    assert engine(stack.host, "slots_busy", "chat") == 0
    page = metrics(stack.host)
    for histogram in ("time_to_first_token_seconds", "queue_seconds"):
        assert page[f'milo_chat_engine_{histogram}_count{{model="chat"}}'] >= 1


def test_the_metrics_port_says_which_weights_the_host_loaded(stack: ChatStack, embedded_dir: Path) -> None:
    revision = identity.stored_revision(embedded_dir / "chat")
    assert revision is not None and revision.startswith("sha256:")
    page = metrics(stack.host)
    assert page.get(f'milo_model_weights_info{{model="chat",revision="{revision}"}}', 0.0) >= 1
    assert [name for name in page if name.startswith("milo_model_weights_info")] == [
        f'milo_model_weights_info{{model="chat",revision="{revision}"}}'
    ]


async def test_a_short_request_is_answered_while_a_long_stream_goes_on(stack: ChatStack) -> None:
    async with AsyncMiloTritonClient(stack.host.grpc_url, protocol="grpc") as milo:
        pieces_after_short: list[float] = []
        short_done = asyncio.Event()

        async def long_stream() -> int:
            count = 0
            async for delta in milo.chat_stream(question(max_tokens=300)):
                count += bool(delta.text)
                if short_done.is_set():
                    pieces_after_short.append(time.perf_counter())
            return count

        streaming = asyncio.create_task(long_stream())
        await asyncio.sleep(0.5)  # the stream is under way
        short = await milo.chat(question(max_tokens=4))
        short_done.set()
        assert short.completion_tokens == 4
        assert await streaming > 250
        assert len(pieces_after_short) > 50  # the long stream went on after the short one was answered


async def test_beyond_the_slots_requests_queue_by_priority_and_a_full_queue_is_busy(stack: ChatStack) -> None:
    async with AsyncMiloTritonClient(stack.host.grpc_url, protocol="grpc") as milo:
        premium, standard = milo.with_options(CallOptions(priority=1)), milo.with_options(CallOptions(priority=2))
        finished: list[str] = []

        async def ask(client: AsyncMiloTritonClient, name: str, tokens: int) -> None:
            await client.chat(question(max_tokens=tokens))
            finished.append(name)

        # Both slots busy, the first for a shorter while (once the earlier tests' requests have left them),
        # but long enough that the urgent request is queued before it ends, however fast the machine.
        await asyncio.to_thread(wait_until, lambda: engine(stack.host, "slots_busy", "chat") == 0)
        holders = [asyncio.create_task(ask(standard, f"holder{i}", n)) for i, n in enumerate((200, 400))]
        await asyncio.to_thread(wait_until, lambda: engine(stack.host, "slots_busy", "chat") == SLOTS)
        waiting = [asyncio.create_task(ask(standard, f"standard{i}", 40)) for i in range(2)]
        await asyncio.sleep(0.3)
        urgent = asyncio.create_task(ask(premium, "premium", 40))
        await asyncio.sleep(0.3)
        # The standard level's queue is full now: more are refused at once.
        late = [standard.chat(question(max_tokens=8)) for _ in range(3)]
        refused = await asyncio.gather(*late, return_exceptions=True)
        assert any(isinstance(r, TritonBusyError) for r in refused), refused
        await asyncio.gather(*holders, *waiting, urgent)
        # Premium went ahead of the standard requests still in Triton's queue (on the stock server,
        # one standard request was already handed over and waits in the role for the next slot).
        assert finished.index("premium") < max(finished.index("standard0"), finished.index("standard1"))
        assert finished.index("premium") < finished.index("holder1")


def test_a_client_that_leaves_a_stream_frees_its_slot(stack: ChatStack) -> None:
    host, model = stack.host, stack.stream_model
    tokens_before = engine(host, "generated_tokens_total", model)
    body = {"message": "Tell me a long story.", "stream": True, "max_tokens": 900, "temperature": 0.0}
    with httpx.Client(timeout=30) as http, http.stream("POST", f"{stack.facade}/v1/chat", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: token"):
                break
        wait_until(lambda: engine(host, "slots_busy", model) == 1)
    # The connection is closed: the facade cancels the call, the model stops at its next steps.
    wait_until(lambda: engine(host, "slots_busy", model) == 0, timeout_s=5)
    generated = engine(host, "generated_tokens_total", model) - tokens_before
    time.sleep(1.0)
    assert engine(host, "generated_tokens_total", model) - tokens_before == generated  # nothing more
    assert generated < 450  # far from the 900 it would have generated


def test_sampling_options_reach_the_model(stack: ChatStack) -> None:
    """A seed repeats a sampled reply, on the whole-reply model and the stream alike; a stop string cuts it."""
    with MiloTritonClient(stack.host.http_url, grpc_url=stack.host.grpc_url) as milo:
        seeded = question(max_tokens=12, temperature=1.0, top_p=0.9, seed=5)
        first = milo.chat(seeded).text
        assert milo.chat(seeded).text == first
        streamed = "".join(d.text for d in milo.chat_stream(seeded))
        assert streamed.strip() == first
        stop = first.split()[2]
        cut = milo.chat(question(max_tokens=12, temperature=1.0, top_p=0.9, seed=5, stop=(stop,)))
        assert stop not in cut.text and first.startswith(cut.text) and cut.finish_reason == "stop"


def test_a_stream_reports_its_finish_reason(stack: ChatStack) -> None:
    messages = [{"role": "user", "content": MESSAGES[0].content}]
    body = {"model": "milo-chat", "messages": messages, "max_tokens": 5, "stream": True}
    with httpx.Client(timeout=60) as http:
        lines = http.post(f"{stack.facade}/v1/chat/completions", json=body).text.splitlines()
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert sum(bool(c["choices"][0]["delta"].get("content")) for c in chunks) >= 1


async def test_a_request_that_waits_out_its_queue_timeout_is_told_busy_not_timed_out(stack: ChatStack) -> None:
    """Triton refuses a request that outwaited its queue timeout when it next schedules the model
    (here: when a slot frees); the client waits for that (its deadline is the queue timeout plus
    its compute budget) and reports busy, which the facade answers 503 with Retry-After."""
    if stack.host.server != "pytriton":
        pytest.skip("the stock server hands one waiting request to the role, out of Triton's queue")
    async with AsyncMiloTritonClient(stack.host.grpc_url, protocol="grpc", timeout_s=3.0) as milo:
        holders = [asyncio.create_task(milo.chat(question(max_tokens=n))) for n in (150, 400)]
        try:
            await asyncio.sleep(0.5)
            waiting = milo.with_options(CallOptions(priority=2, queue_timeout_us=500_000))
            with pytest.raises(TritonBusyError):
                await waiting.chat(question(max_tokens=4))
        finally:
            for holder in holders:
                holder.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
