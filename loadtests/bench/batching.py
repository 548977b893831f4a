"""Batching against the old design: the stack (facade -> Triton, dynamic batching) and the
single-process baseline (``baseline_app``, Semaphore(2)) side by side, in one run.

    python -m loadtests.bench.batching [--levels 1,4,16,64] [--out docs/benchmarks]

For each endpoint and concurrency level, ``max(MIN_REQUESTS[endpoint], level)`` requests are sent by
``level`` concurrent clients to each system in turn (same payloads, same weights, same
machine); it records throughput and P50/P95 latency, writes ``batching.json``, a Markdown
table and ``batching.png`` (throughput and P50 against concurrency).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from loadtests import payloads
from loadtests.processes import REPO, uvicorn_app
from loadtests.runner import local_stack

ENDPOINTS = ("tts", "stt", "translate", "chat")
# Requests per level at least: enough for a stable median where a request is quick.
MIN_REQUESTS = {"tts": 32, "stt": 8, "translate": 256, "chat": 16}


@dataclass(frozen=True)
class Answer:
    """What a load generator keeps of a response: its status and its body."""

    status: int
    body: bytes


# The load generators send with aiohttp: at 64 clients httpx's pool spent a core of its own for
# about 110 requests/s, and the benchmark measured the client instead of the stack.
Send = Callable[[aiohttp.ClientSession, str, int], Awaitable[Answer]]


def load_session(concurrency: int, timeout_s: float = 900) -> aiohttp.ClientSession:
    """A client session with a connection for every concurrent client."""
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s))


async def post_json(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Answer:
    async with session.post(url, json=body) as response:
        return Answer(response.status, await response.read())


async def post_upload(
    session: aiohttp.ClientSession, url: str, audio: bytes, fields: dict[str, str], name: str = "clip.wav"
) -> Answer:
    form = aiohttp.FormData(fields)
    form.add_field("file", audio, filename=name, content_type="audio/wav")
    async with session.post(url, data=form) as response:
        return Answer(response.status, await response.read())


def tts_text(n: int) -> str:
    """The ``n``-th text the TTS load sends (the GPU benchmark's in-process reference synthesises the same)."""
    return payloads.SHORT_TEXTS["mg"] if n % 2 else payloads.LONG_TEXTS["mg"][:120]


async def _tts(session: aiohttp.ClientSession, base: str, n: int) -> Answer:
    return await post_json(session, f"{base}/v1/tts", {"text": tts_text(n), "language": "mg", "format": "wav"})


async def _stt(session: aiohttp.ClientSession, base: str, n: int) -> Answer:
    return await post_upload(session, f"{base}/v1/stt", payloads.clip_wav("short"), {"language": "fr"})


# Every translated text gets a suffix never sent before, in this run or an earlier one against
# the same stack, so the facade's translation cache never answers for the model. (A per-level
# number once repeated across levels, and later levels measured the cache.)
_RUN = secrets.token_hex(3)
_SENT = itertools.count()


def translate_body(n: int) -> dict[str, str]:
    """The ``n``-th translation the load sends: a phrase and a suffix never sent before, two pieces
    (sentences) for the role (the GPU benchmark's in-process reference translates the same)."""
    source, target, text = payloads.TRANSLATE_SHORT[n % 2]
    return {"text": f"{text} {_RUN}{next(_SENT)}", "source": source, "target": target}


async def _translate(session: aiohttp.ClientSession, base: str, n: int) -> Answer:
    return await post_json(session, f"{base}/v1/translate", translate_body(n))


async def _chat(session: aiohttp.ClientSession, base: str, n: int) -> Answer:
    body = {"message": payloads.CHAT_SCRIPT[n % 3], "language": "mg", "max_tokens": 32, "temperature": 0.0}
    return await post_json(session, f"{base}/v1/chat", body)


SENDERS: dict[str, Send] = {
    "tts": _tts, "stt": _stt, "translate": _translate, "chat": _chat,
}  # fmt: skip


@dataclass(frozen=True)
class Point:
    system: str
    endpoint: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    throughput_rps: float  # answered requests (200) per second
    p50_ms: float
    p95_ms: float


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def measure(
    system: str, base: str, endpoint: str, concurrency: int, total: int, send: Send | None = None
) -> Point:
    """``total`` requests from ``concurrency`` clients (after one to warm the path)."""
    send = send or SENDERS[endpoint]
    counter = itertools.count()
    latencies: list[float] = []
    errors = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while (n := next(counter)) < total:
            started = time.perf_counter()
            answer = await send(session, base, n)
            latencies.append((time.perf_counter() - started) * 1000)
            errors += answer.status != 200

    async with load_session(concurrency) as client:
        await send(client, base, 10_000)  # warm the path
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return Point(
        system, endpoint, concurrency, total, errors, round(seconds, 3), round((total - errors) / seconds, 3),
        round(statistics.median(latencies), 1), round(_percentile(latencies, 0.95), 1),
    )  # fmt: skip


def baseline(log_path: Path) -> contextlib.AbstractContextManager[str]:
    return uvicorn_app("loadtests.bench.baseline_app:app", log_path, timeout_s=600)


def plot(points: list[Point], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [e for e in ENDPOINTS if any(p.endpoint == e for p in points)]
    fig, axes = plt.subplots(2, len(shown), figsize=(4 * len(shown), 7), squeeze=False)
    for column, endpoint in enumerate(shown):
        for system, style in (("triton", "o-"), ("baseline", "s--")):
            rows = sorted((p for p in points if p.endpoint == endpoint and p.system == system),
                          key=lambda p: p.concurrency)  # fmt: skip
            if not rows:
                continue
            x = [p.concurrency for p in rows]
            axes[0][column].plot(x, [p.throughput_rps for p in rows], style, label=system)
            axes[1][column].plot(x, [p.p50_ms for p in rows], style, label=system)
        axes[0][column].set_title(endpoint)
        for row in (0, 1):
            axes[row][column].set_xscale("log", base=2)
            axes[row][column].set_xlabel("concurrent clients")
        axes[0][column].set_ylabel("requests/s")
        axes[0][column].set_ylim(bottom=0)
        axes[1][column].set_ylabel("P50 ms")
        axes[1][column].set_yscale("log")
        axes[0][column].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(points: list[Point]) -> str:
    lines = [
        "| endpoint | clients | stack req/s | baseline req/s | throughput ratio | stack P50 / P95 ms "
        "| baseline P50 / P95 ms | errors (stack, baseline) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(p.system, p.endpoint, p.concurrency): p for p in points}
    for endpoint in ENDPOINTS:
        for level in sorted({p.concurrency for p in points if p.endpoint == endpoint}):
            t, b = by_key.get(("triton", endpoint, level)), by_key.get(("baseline", endpoint, level))
            if not (t and b):
                continue
            lines.append(
                f"| {endpoint} | {level} | {t.throughput_rps:.2f} | {b.throughput_rps:.2f} | "
                f"{t.throughput_rps / b.throughput_rps:.2f}x | {t.p50_ms:.0f} / {t.p95_ms:.0f} | "
                f"{b.p50_ms:.0f} / {b.p95_ms:.0f} | {t.errors}, {b.errors} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    parser.add_argument("--stack-url", help="a running facade (default: start the stack here)")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    endpoints = [e for e in args.endpoints.split(",") if e]
    args.out.mkdir(parents=True, exist_ok=True)
    device = (
        os.environ.get("MILO_BENCH_DEVICE") or f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )

    points: list[Point] = []
    with contextlib.ExitStack() as stack:
        # 64 clients of STT on two cores wait minutes: the facade must not give up on Triton first.
        bench_env = {"MILO_TRITON_TIMEOUT_S": "1800"}
        stack_url = args.stack_url or stack.enter_context(local_stack(args.out / "stack.log", bench_env)).facade
        baseline_url = stack.enter_context(baseline(args.out / "baseline.log"))
        for endpoint in endpoints:
            for level in levels:
                total = max(MIN_REQUESTS[endpoint], level)
                for system, base in (("baseline", baseline_url), ("triton", stack_url)):
                    point = asyncio.run(measure(system, base, endpoint, level, total))
                    points.append(point)
                    print(
                        f"{endpoint:<10} c={level:<3} {system:<9} {point.throughput_rps:7.2f} req/s  "
                        f"P50 {point.p50_ms:8.0f} ms  P95 {point.p95_ms:8.0f} ms  errors {point.errors}",
                        flush=True,
                    )
    stamp = time.strftime("%Y-%m-%d")
    (args.out / "batching.json").write_text(
        json.dumps({"date": stamp, "device": device, "points": [asdict(p) for p in points]}, indent=1)
    )
    (args.out / "batching.md").write_text(f"Measured {stamp} on {device}.\n\n{table(points)}\n")
    plot(points, args.out / "batching.png", f"Triton stack vs single process + Semaphore(2) ({device}, {stamp})")
    print(table(points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
