"""Serving overhead: one request at a time, in process against every way through the stack.

    python -m loadtests.bench.overhead [--runs 20] [--out docs/benchmarks] [--endpoints stt,tts]
                                       [--server pytriton|tritonserver]

Per endpoint, the median of ``--runs`` sequential calls made side by side in one run:
the role class in this process; Triton over HTTP and over gRPC (the typed client); and the
facade, itself calling Triton over HTTP and over gRPC. The difference to "in process" is
what each hop costs. Uses the active profile's weights; starts the stack itself.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import soundfile as sf

from client import MiloTritonClient
from contract.records import ChatMessage, ChatRequest
from loadtests import payloads
from loadtests.processes import REPO, facade_server
from loadtests.runner import UNLIMITED_ENV, LocalStack, local_stack
from milo_voice.registry import active_profile, load_registry
from milo_voice.serving.instances import DevicePlanner, build_instance

TTS_TEXT = payloads.SHORT_TEXTS["mg"]
TRANSLATE = payloads.TRANSLATE_SHORT[0]
CHAT_MESSAGE = payloads.CHAT_SCRIPT[0]
PATHS = ("in process", "Triton HTTP", "Triton gRPC", "facade -> HTTP", "facade -> gRPC")


def grpc_facade(stack: LocalStack, log_path: Path) -> contextlib.AbstractContextManager[str]:
    """A second facade on the same Triton, calling it over gRPC."""
    grpc = stack.triton_grpc
    env = {**UNLIMITED_ENV, "MILO_TRITON_PROTOCOL": "grpc", "MILO_TRITON_URL": grpc, "MILO_TRITON_GRPC_URL": grpc}
    return facade_server(log_path, env, ready_path="/ready")


def median_ms(call: Callable[[int], object], runs: int) -> float:
    call(-1)  # warm
    times = []
    for n in range(runs):
        started = time.perf_counter()
        call(n)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def cases(
    stack: LocalStack, grpc_facade_url: str, endpoints: tuple[str, ...]
) -> dict[str, dict[str, Callable[[int], object]]]:
    """Endpoint -> path -> one call, given the request's number."""
    registry, profile, planner = load_registry(), active_profile(), DevicePlanner()
    local = {role: build_instance(registry.by_role(role), profile, planner.place("auto"))
             for role in endpoints}  # fmt: skip
    clip_bytes = payloads.clip_wav("short")
    clip, _ = sf.read(io.BytesIO(clip_bytes), dtype="float32")
    http, grpc = MiloTritonClient(stack.triton_http), MiloTritonClient(stack.triton_grpc, protocol="grpc")
    web = httpx.Client(timeout=300)
    source, target, text = TRANSLATE
    chat_request = ChatRequest([ChatMessage("user", CHAT_MESSAGE)], "mg", 32, 0.0)

    def facade(base: str, endpoint: str, n: int) -> None:
        if endpoint == "stt":
            files = {"file": ("clip.wav", clip_bytes, "audio/wav")}
            response = web.post(f"{base}/v1/stt", files=files, data={"language": "fr"})
        elif endpoint == "tts":
            response = web.post(f"{base}/v1/tts", json={"text": TTS_TEXT, "language": "mg", "format": "wav"})
        elif endpoint == "translate":
            # A new text each time: the facade's cache must not answer for the model.
            body = {"text": f"{text} {n}", "source": source, "target": target}
            response = web.post(f"{base}/v1/translate", json=body)
        else:
            body = {"message": CHAT_MESSAGE, "language": "mg", "max_tokens": 32, "temperature": 0.0}
            response = web.post(f"{base}/v1/chat", json=body)
        response.raise_for_status()

    def through(base: str, endpoint: str) -> Callable[[int], object]:
        return lambda n: facade(base, endpoint, n)

    every: dict[str, dict[str, Callable[[int], object]]] = {
        "stt": {
            "in process": lambda n: local["stt"].transcribe(clip, "fr"),
            "Triton HTTP": lambda n: http.transcribe(clip, "fr"),
            "Triton gRPC": lambda n: grpc.transcribe(clip, "fr"),
        },
        "tts": {
            "in process": lambda n: local["tts"].synthesize(TTS_TEXT, "mg"),
            "Triton HTTP": lambda n: http.synthesize(TTS_TEXT, "mg"),
            "Triton gRPC": lambda n: grpc.synthesize(TTS_TEXT, "mg"),
        },
        "translate": {
            "in process": lambda n: local["translate"].translate(f"{text} {n}", source, target),
            "Triton HTTP": lambda n: http.translate(f"{text} {n}", source, target),
            "Triton gRPC": lambda n: grpc.translate(f"{text} {n}", source, target),
        },
        "chat": {
            "in process": lambda n: local["chat"].complete(chat_request),
            "Triton HTTP": lambda n: http.chat(chat_request),
            "Triton gRPC": lambda n: grpc.chat(chat_request),
        },
    }
    calls = {endpoint: every[endpoint] for endpoint in endpoints}
    for endpoint, paths in calls.items():
        for name, base in (("facade -> HTTP", stack.facade), ("facade -> gRPC", grpc_facade_url)):
            paths[name] = through(base, endpoint)
    return calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks")
    parser.add_argument("--endpoints", default="stt,tts,translate,chat")
    parser.add_argument("--server", choices=("pytriton", "tritonserver"), default="pytriton")
    args = parser.parse_args(argv)
    endpoints = tuple(e for e in args.endpoints.split(",") if e)
    args.out.mkdir(parents=True, exist_ok=True)
    device = (
        os.environ.get("MILO_BENCH_DEVICE") or f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )

    results: dict[str, dict[str, float]] = {}
    repository = None
    if args.server == "tritonserver":  # the stock server reads its own repository of the registry in use
        from milo_voice.serving.instances import cuda_device_count
        from milo_voice.triton_repository import write_configs

        repository = args.out / "repository"
        write_configs(load_registry(), repository, instance_kind="gpu" if cuda_device_count() else None)
    stack_context = local_stack(args.out / "stack.log", server=args.server, repository=repository)
    with stack_context as stack, grpc_facade(stack, args.out / "facade_grpc.log") as grpc_url:
        for endpoint, calls in cases(stack, grpc_url, endpoints).items():
            results[endpoint] = {name: round(median_ms(call, args.runs), 1) for name, call in calls.items()}
            row = "  ".join(f"{name} {ms:7.1f} ms" for name, ms in results[endpoint].items())
            print(f"{endpoint:<10} {row}", flush=True)

    lines = [
        "| endpoint | " + " | ".join(PATHS) + " | facade overhead (HTTP / gRPC) |",
        "|---|" + "---:|" * (len(PATHS) + 1),
    ]
    for endpoint, row in results.items():
        base = row["in process"]
        overhead = f"{row['facade -> HTTP'] - base:+.1f} / {row['facade -> gRPC'] - base:+.1f} ms"
        lines.append(f"| {endpoint} | " + " | ".join(f"{row[p]:.1f}" for p in PATHS) + f" | {overhead} |")
    stamp = time.strftime("%Y-%m-%d")
    header = (
        f"Median of {args.runs} sequential calls (ms), {active_profile()} weights, {args.server}, {stamp}, {device}."
    )
    (args.out / "overhead.md").write_text(f"{header}\n\n" + "\n".join(lines) + "\n")
    (args.out / "overhead.json").write_text(
        json.dumps({"date": stamp, "device": device, "median_ms": results}, indent=1)
    )
    print(header)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
