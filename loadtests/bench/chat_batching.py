"""Chat served with continuous batching, against the serialized design and llama.cpp's own server.

    python -m loadtests.bench.chat_batching [--levels 1,4,8] [--seconds 20] [--max-tokens 64]
        [--slots 8] [--server pytriton|tritonserver] [--llama-server PATH] [--out docs/benchmarks/chat]

Three systems, one after the other on the same machine, the same GGUF, prompts and reply lengths
(and a fourth on request, ``engine``: the chat role alone in this process, no Triton, no facade):

- ``serialized``: the stack (facade -> Triton -> chat role) with one slot: one conversation
  decoded at a time, as the role was before continuous batching;
- ``batched``: the same stack with ``--slots`` slots;
- ``llama-server``: llama.cpp's own server with ``--parallel`` equal to ``--slots``, built from
  the source that the installed llama-cpp-python vendors (``loadtests.bench.llama_server``).

At each level, that many clients each send a streamed request, read it to the end and send the
next, for ``--seconds``. Every reply is exactly ``--max-tokens`` tokens (``ignore_eos`` on both
sides). Tokens per second count the tokens received inside the window (all clients summed);
time to first token and reply latency are over every request started inside it. Every request's
question is new (``question``); the prompt is rendered with the chat role's own template and system
prompt: llama-server receives the rendered text (``/completion``), the stack the messages
(``/v1/chat/completions``), so both evaluate the same prompt tokens (checked before measuring).

Writes ``chat_batching.json`` and ``chat_batching.md`` (the tables and ratios) under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from loadtests.bench import fixed_lengths, llama_server
from loadtests.processes import REPO
from milo_voice.registry import active_profile, load_registry, model_section, models_dir

PROMPTS = [
    "Salama! Iza ianao?",
    "Inona no azonao atao ho ahy?",
    "Omeo torohevitra iray momba ny fambolena vary aho.",
    "Bonjour, quel temps fait-il à Antananarivo ?",
    "Peux-tu me donner une recette de romazava ?",
    "Quels sont les fruits de saison à Madagascar ?",
    "What is the capital of Madagascar?",
    "Tell me about lemurs.",
    "How do I cook rice well?",
    "Give me three tips to save water.",
    "Raconte-moi une histoire courte.",
    "Comment dit-on merci en malgache ?",
    "Manao ahoana ny toetr'andro anio?",
    "Explain what a baobab is.",
    "What should I pack for a trip to Nosy Be?",
    "Inona no sakafo malagasy malaza indrindra?",
]


def question(n: int) -> str:
    """The n-th request's question: one of ``PROMPTS``, made unique by its number put first, so
    that every system evaluates the whole question and only the system prompt is shared.

    With the number last, llama-server restored the cached state of an earlier request with the
    same question from its host-memory prompt cache and evaluated only the few tokens after it:
    a measure of that cache, not of batching."""
    return f"({n}) {PROMPTS[n % len(PROMPTS)]}"


@dataclass
class Sample:
    started: float
    first_token: float = 0.0
    finished: float = 0.0
    tokens: int = 0
    chunk_times: list[float] = field(default_factory=list)
    error: str = ""


@dataclass(frozen=True)
class Point:
    system: str
    clients: int
    seconds: float
    requests: int
    errors: int
    tokens_in_window: float
    tokens_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    latency_p50_ms: float
    latency_p95_ms: float


Send = Callable[[httpx.AsyncClient, int], Awaitable[Sample]]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def sse_sender(
    url: str, body_of: Callable[[int], dict[str, Any]], text_of: Callable[[dict[str, Any]], str], tokens: int
) -> Send:
    """Requests that stream Server-Sent Events (``data: {...}``); pieces with text are timed."""

    async def send(client: httpx.AsyncClient, n: int) -> Sample:
        sample = Sample(time.perf_counter(), tokens=tokens)
        async with client.stream("POST", url, json=body_of(n)) as response:
            if response.status_code != 200:
                sample.error = f"{response.status_code} {(await response.aread())[:200]!r}"
                return sample
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]" and text_of(json.loads(line[6:])):
                    sample.chunk_times.append(time.perf_counter())
                    sample.first_token = sample.first_token or sample.chunk_times[-1]
        sample.finished = time.perf_counter()
        return sample

    return send


def stack_sender(base: str, max_tokens: int) -> Send:
    def body_of(n: int) -> dict[str, Any]:
        return {
            "model": "milo-chat", "messages": [{"role": "user", "content": question(n)}],
            "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
        }  # fmt: skip

    text_of = lambda chunk: chunk["choices"][0]["delta"].get("content") or ""  # noqa: E731
    return sse_sender(f"{base}/v1/chat/completions", body_of, text_of, max_tokens)


def llama_sender(base: str, template: tuple[str, str], max_tokens: int) -> Send:
    def body_of(n: int) -> dict[str, Any]:
        return {
            "prompt": template[0] + question(n) + template[1], "n_predict": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "cache_prompt": True,
        }  # fmt: skip

    return sse_sender(f"{base}/completion", body_of, lambda chunk: chunk.get("content") or "", max_tokens)


async def measure(system: str, send: Send, clients: int, seconds: float) -> Point:
    """``clients`` closed loops for ``seconds``; requests under way at the end are read to their end."""
    samples: list[Sample] = []
    counter = iter(range(1_000_000))
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        start = time.perf_counter()
        deadline = start + seconds

        async def loop() -> None:
            while time.perf_counter() < deadline:
                try:
                    samples.append(await send(client, next(counter)))
                except httpx.RemoteProtocolError as exc:
                    # A kept-alive connection the server had closed: sent again on a new one, not a failure.
                    if "without sending a response" not in str(exc):
                        samples.append(Sample(time.perf_counter(), error=f"{type(exc).__name__}: {exc}"))
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    samples.append(Sample(time.perf_counter(), error=f"{type(exc).__name__}: {exc}"))

        await asyncio.gather(*[loop() for _ in range(clients)])
    good = [s for s in samples if not s.error and s.chunk_times]
    failed = [s.error or "no text" for s in samples if s not in good]
    if failed:
        print(f"{system} c={clients}: {len(failed)} failed, the first: {failed[0]}", flush=True)
    # A reply's tokens are spread over its pieces; the pieces received inside the window count.
    in_window = sum(s.tokens * sum(t < deadline for t in s.chunk_times) / len(s.chunk_times) for s in good)
    ttft = [(s.first_token - s.started) * 1000 for s in good]
    latency = [(s.finished - s.started) * 1000 for s in good]
    return Point(
        system=system,
        clients=clients,
        seconds=seconds,
        requests=len(good),
        errors=len(samples) - len(good),
        tokens_in_window=round(in_window, 1),
        tokens_s=round(in_window / seconds, 1),
        ttft_p50_ms=round(_percentile(ttft, 0.5), 1),
        ttft_p95_ms=round(_percentile(ttft, 0.95), 1),
        latency_p50_ms=round(_percentile(latency, 0.5), 1),
        latency_p95_ms=round(_percentile(latency, 0.95), 1),
    )


# -- the systems ------------------------------------------------------------------------------


def engine_levels(args: argparse.Namespace, gguf: Path, slots: int) -> list[Point]:
    """The chat role in this process: each client starts a reply and waits for its end."""
    from contract.records import ChatMessage, ChatRequest
    from loadtests.bench.fixed_lengths.chat import FixedLengthChat
    from milo_voice.roles.chat import ChatDone
    from milo_voice.roles.generation import TextPiece

    role = FixedLengthChat(
        gguf, n_ctx=args.n_ctx, slots=slots, batch_tokens=args.batch_tokens,
        n_gpu_layers=-1 if args.gpu else 0, n_threads=args.threads,
    )  # fmt: skip

    async def send(_client: httpx.AsyncClient, n: int) -> Sample:
        loop = asyncio.get_running_loop()
        sample, ended = Sample(time.perf_counter(), tokens=args.max_tokens), loop.create_future()

        def on_event(event: object) -> None:  # on this loop, in the order the engine sent them
            if isinstance(event, TextPiece):
                sample.chunk_times.append(time.perf_counter())
                sample.first_token = sample.first_token or sample.chunk_times[-1]
                return
            if isinstance(event, ChatDone):
                sample.finished = time.perf_counter()
            else:
                sample.error = str(getattr(event, "error", event))
            ended.set_result(sample)

        request = ChatRequest([ChatMessage("user", question(n))], max_tokens=args.max_tokens, temperature=0.0)
        role.start(request, lambda event: loop.call_soon_threadsafe(on_event, event))
        return await ended

    try:
        return run_levels("engine", send, args)
    finally:
        role.close()


def chat_registry(
    slots: int,
    n_ctx: int,
    batch_tokens: int,
    stream_interval_ms: float | None = None,
    step_prompt_tokens: int | None = None,
) -> str:
    """The committed chat entry alone, with ``slots`` slots (on CPU and GPU hosts) and fixed reply
    lengths; its other parameters as committed, the stream interval and prompt chunk too unless given."""
    registry = tomllib.loads(model_section("chat"))
    chat = registry["models"]["chat"]
    chat["implementation"] = fixed_lengths.CHAT
    chat["params"].update(n_ctx=n_ctx, slots=slots, gpu_slots=slots, batch_tokens=batch_tokens)
    if stream_interval_ms is not None:
        chat["params"]["stream_interval_ms"] = stream_interval_ms
    if step_prompt_tokens is not None:
        chat["params"]["step_prompt_tokens"] = step_prompt_tokens
    # Every client's request must wait in Triton's queue rather than be refused.
    chat["max_queue_size"] = 256
    return tomli_w.dumps(registry)


@contextmanager
def stack(args: argparse.Namespace, slots: int, work: Path) -> Iterator[str]:
    from loadtests.runner import local_stack
    from milo_voice.triton_repository import write_configs

    folder = work / f"stack-{slots}"
    folder.mkdir()
    registry = folder / "registry.toml"
    registry.write_text(
        chat_registry(slots, args.n_ctx, args.batch_tokens, args.stream_interval_ms, args.step_prompt_tokens)
    )
    env = {
        "MILO_REGISTRY": str(registry),
        "MILO_REQUIRED_MODELS": '["chat"]',
        "MILO_CHAT_CLOUD_URL": "",
        "MILO_AUTH_ENABLED": "false",  # the production profile turns tokens on
        "MILO_CHAT_N_CTX": str(args.n_ctx),
        "MILO_TRITON_TIMEOUT_S": "600",
        "MILO_CPU_THREADS": str(args.threads),
    }
    repository = None
    if args.server == "tritonserver":
        repository = folder
        write_configs(load_registry(registry), repository, instance_kind="gpu" if args.gpu else None)
    with local_stack(folder / "stack.log", env, server=args.server, repository=repository) as running:
        yield running.facade


PLACE = "\x00question\x00"


def rendered_template(gguf: Path) -> tuple[str, str, int]:
    """The text around the question as the chat role renders a prompt (template, system prompt),
    and the first question's prompt length in tokens."""
    from contract.records import ChatMessage, ChatRequest
    from milo_voice.roles.chat import LocalChat, with_system_prompt

    role = LocalChat(gguf, n_ctx=512, slots=1, batch_tokens=64)
    try:
        before, after = role.template(with_system_prompt(ChatRequest([ChatMessage("user", PLACE)]))).split(PLACE)
        return before, after, len(role.engine.tokenize(before + question(0) + after))
    finally:
        role.close()


async def check_stack(base: str, max_tokens: int) -> dict[str, int]:
    """One whole reply: its length and prompt as the stack counts them."""
    body = {"model": "milo-chat", "messages": [{"role": "user", "content": question(0)}], "max_tokens": max_tokens}
    async with httpx.AsyncClient(timeout=600) as client:
        response = await client.post(f"{base}/v1/chat/completions", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"the stack answered {response.status_code}: {response.text}")
        usage = response.json()["usage"]
    return {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"]}


async def check_llama(base: str, template: tuple[str, str], max_tokens: int) -> dict[str, int]:
    prompt = template[0] + question(0) + template[1]
    body = {"prompt": prompt, "n_predict": max_tokens, "temperature": 0.0, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=600) as client:
        data = (await client.post(f"{base}/completion", json=body)).json()
    return {"prompt_tokens": data["tokens_evaluated"], "completion_tokens": data["tokens_predicted"]}


def run_levels(system: str, send: Send, args: argparse.Namespace) -> list[Point]:
    asyncio.run(measure(system, send, 1, 2.0))  # warm: first requests, first graphs
    points = []
    for clients in args.levels:
        point = asyncio.run(measure(system, send, clients, args.seconds))
        points.append(point)
        print(
            f"{system:<13} c={clients:<3} {point.tokens_s:8.1f} tok/s  TTFT P50 {point.ttft_p50_ms:7.0f} "
            f"P95 {point.ttft_p95_ms:7.0f} ms  reply P50 {point.latency_p50_ms:7.0f} P95 {point.latency_p95_ms:7.0f} ms"
            f"  {point.requests} replies, {point.errors} errors",
            flush=True,
        )
    return points


# -- report -----------------------------------------------------------------------------------


SYSTEM_ORDER = {"serialized": 0, "batched": 1, "llama-server": 2, "engine": 3}


def table(points: list[Point]) -> str:
    points = sorted(points, key=lambda p: (SYSTEM_ORDER.get(p.system, 9), p.clients))
    lines = [
        "| system | clients | tokens/s (summed) | TTFT P50 | TTFT P95 | reply P50 | reply P95 | replies | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p.system} | {p.clients} | {p.tokens_s:.1f} | {p.ttft_p50_ms:.0f} ms | {p.ttft_p95_ms:.0f} ms "
            f"| {p.latency_p50_ms:.0f} ms | {p.latency_p95_ms:.0f} ms | {p.requests} | {p.errors} |"
        )
    return "\n".join(lines)


def ratios(points: list[Point]) -> list[dict[str, Any]]:
    """Per level: batched against serialized and llama-server (tokens/s, TTFT), and against its own 1-client rate."""
    by = {(p.system, p.clients): p for p in points}
    single = by.get(("batched", min(p.clients for p in points)))
    rows = []
    for clients in sorted({p.clients for p in points}):
        batched, serial, anchor = (by.get((s, clients)) for s in ("batched", "serialized", "llama-server"))
        if batched is None:
            continue
        row: dict[str, Any] = {"clients": clients}
        if serial and serial.tokens_s:
            row["batched_vs_serialized_tokens_s"] = round(batched.tokens_s / serial.tokens_s, 2)
        if anchor and anchor.tokens_s:
            row["batched_vs_llama_server_tokens_s"] = round(batched.tokens_s / anchor.tokens_s, 2)
            if anchor.ttft_p50_ms:
                row["batched_vs_llama_server_ttft_p50"] = round(batched.ttft_p50_ms / anchor.ttft_p50_ms, 2)
        if single and single.tokens_s:
            row["batched_vs_its_single_client_tokens_s"] = round(batched.tokens_s / single.tokens_s, 2)
        rows.append(row)
    return rows


def ratio_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| clients | batched / serialized tokens/s | batched / llama-server tokens/s "
        "| batched / llama-server TTFT P50 | batched / its 1-client tokens/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [
            r.get(k, "")
            for k in (
                "batched_vs_serialized_tokens_s",
                "batched_vs_llama_server_tokens_s",
                "batched_vs_llama_server_ttft_p50",
                "batched_vs_its_single_client_tokens_s",
            )
        ]
        lines.append(f"| {r['clients']} | " + " | ".join(f"{c}x" if c != "" else "" for c in cells) + " |")
    return "\n".join(lines)


def run_system(
    system: str,
    args: argparse.Namespace,
    slots: int,
    gguf: Path,
    template: tuple[str, str],
    binary: Path | None,
    work: Path,
    checks: dict[str, Any],
) -> list[Point]:
    if system == "engine":
        return engine_levels(args, gguf, slots)
    if system == "llama-server":
        assert binary is not None
        server = llama_server.running(
            binary, gguf, slots, args.n_ctx, args.threads, args.batch_tokens, args.gpu, work / "llama.log"
        )
        with server as base:
            checks[system] = asyncio.run(check_llama(base, template, args.max_tokens))
            print(f"{system}: check {checks[system]}", flush=True)
            return run_levels(system, llama_sender(base, template, args.max_tokens), args)
    with stack(args, 1 if system == "serialized" else slots, work) as base:
        checks[system] = asyncio.run(check_stack(base, args.max_tokens))
        print(f"{system}: check {checks[system]}", flush=True)
        return run_levels(system, stack_sender(base, args.max_tokens), args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,8", help="concurrent clients, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="per level and system")
    parser.add_argument("--max-tokens", type=int, default=64, help="every reply's length")
    parser.add_argument("--slots", type=int, default=0, help="batched and llama-server slots (default: the top level)")
    parser.add_argument("--n-ctx", type=int, default=4096, help="tokens per slot")
    parser.add_argument("--batch-tokens", type=int, default=512, help="tokens per step (llama.cpp's n_batch)")
    parser.add_argument(
        "--stream-interval-ms", type=float, help="the stack's chat_stream pacing (default: the registry's)"
    )
    parser.add_argument(
        "--step-prompt-tokens",
        type=int,
        help="the stack's prompt tokens per step while others reply (default: the registry's)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="CPU threads, both sides")
    parser.add_argument("--server", choices=["pytriton", "tritonserver"], default="pytriton")
    parser.add_argument("--gpu", action="store_true", help="all layers on the GPU (both sides)")
    parser.add_argument("--llama-server", type=Path, help="a built llama-server (default: build it)")
    parser.add_argument("--systems", default="serialized,batched,llama-server")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "chat")
    parser.add_argument(
        "--merge", action="store_true", help="keep the other systems' results already in --out (one system a run)"
    )
    args = parser.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    slots = args.slots or max(args.levels)
    systems = args.systems.split(",")
    gguf = load_registry().by_role("chat").path(active_profile(), models_dir()) / "model.gguf"
    before, after, prompt_tokens = rendered_template(gguf)
    # A built one (--llama-server, or LLAMA_SERVER as gpu_device.sh sets it), else built here now.
    binary = args.llama_server or (Path(os.environ["LLAMA_SERVER"]) if os.environ.get("LLAMA_SERVER") else None)
    if binary is None and "llama-server" in systems:
        binary = llama_server.build(cuda=args.gpu)
    points: list[Point] = []
    checks: dict[str, Any] = {"rendered_prompt_tokens": prompt_tokens}
    with tempfile.TemporaryDirectory(prefix="milo-chat-bench-") as tmp:
        work = Path(tmp)
        for system in systems:
            try:
                points += run_system(system, args, slots, gguf, (before, after), binary, work, checks)
            except Exception:
                for log in sorted(work.rglob("*.log")):  # the temporary folder goes: show why first
                    print(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
                raise
    out_json = args.out / "chat_batching.json"
    if args.merge and out_json.exists():
        earlier = json.loads(out_json.read_text())
        points = [Point(**p) for p in earlier["points"] if p["system"] not in systems] + points
        checks = {**earlier["checks"], **checks}
    same = {json.dumps(v, sort_keys=True) for k, v in checks.items() if isinstance(v, dict)}
    if len(same) != 1:
        print(f"WARNING: the systems did not evaluate the same prompt and reply lengths: {checks}", flush=True)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "model": str(gguf.relative_to(gguf.parents[2])),
        "settings": {**{k: v for k, v in vars(args).items() if k not in ("out", "llama_server")}, "slots": slots},
        "checks": checks,
        "points": [asdict(p) for p in points],
        "ratios": ratios(points),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1))
    report = f"{table(points)}\n\n{ratio_table(result['ratios'])}\n"
    (args.out / "chat_batching.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
