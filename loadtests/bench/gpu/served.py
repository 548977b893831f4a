"""Phases ``served``, ``locust`` and ``overhead``: the whole stack on a registry variant."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp

from loadtests import payloads
from loadtests.audit import AUDIT_TARGETS_MS, format_table, gate, read_locust_stats
from loadtests.bench import triton_counters
from loadtests.bench.batching import SENDERS, Answer, Send, load_session, post_json, post_upload, translate_body
from loadtests.bench.gpu.common import CHAT_TOKENS, REPO, gpu_memory, result_suffix, save
from loadtests.bench.gpu.levels import (
    Level,
    executions_over_inprocess,
    inprocess_rates,
    inprocess_step_rates,
    run_level,
)
from loadtests.bench.gpu.variants import bench_models, dump_registry, overlay_names
from milo_voice.serving.cuda_mps import cuda_mps


async def _chat(session: aiohttp.ClientSession, base: str, n: int) -> Answer:
    body = {"message": payloads.CHAT_SCRIPT[n % 3], "language": "mg", "max_tokens": CHAT_TOKENS}
    return await post_json(session, f"{base}/v1/chat", body)


async def _stt_long(session: aiohttp.ClientSession, base: str, n: int) -> Answer:
    return await post_upload(session, f"{base}/v1/stt", payloads.clip_wav("long"), {"language": "fr"})


async def _stt_short(session: aiohttp.ClientSession, base: str, n: int) -> Answer:
    return await post_upload(session, f"{base}/v1/stt", payloads.clip_wav("short"), {"language": "fr"})


async def _translate_cached(session: aiohttp.ClientSession, base: str, n: int) -> Answer:
    """One text every time: after the first, answered from the facade's cache, not the model."""
    return await post_json(session, f"{base}/v1/translate", translate_body(0) | {"text": "Mila rano sy sakafo izahay."})


async def _translate_triton(session: aiohttp.ClientSession, base: str, n: int) -> Answer:
    """The facade's translation, sent to Triton's HTTP endpoint itself (its JSON protocol)."""
    body = translate_body(n)
    inputs = [{"name": name, "shape": [1, 1], "datatype": "BYTES", "data": [body[name]]} for name in body]
    return await post_json(session, f"{base}/v2/models/translate/infer", {"inputs": inputs})


SERVED_SENDERS: dict[str, Send] = {
    "tts": SENDERS["tts"],
    "stt": _stt_long,
    "stt-short": _stt_short,  # one short question: the latency a lone speaker sees
    "translate": SENDERS["translate"],
    "translate-triton": _translate_triton,  # past the facade: what the server alone serves
    "translate-cached": _translate_cached,  # the facade alone: its cache answers
    "chat": _chat,
}
# Endpoints sent to Triton itself, and the model whose in-process rate they are compared with.
PAST_THE_FACADE = {"translate-triton": "translate"}


def host_metrics(metrics_url: str) -> tuple[dict[str, dict[str, float]], dict[str, list[dict[str, str]]]]:
    """From one read of the host's metrics page: per model, Triton's counters since it started, with
    the mean batch; and per translation model, the ways its instances' search steps run, as chosen
    at load."""
    text = triton_counters.page(metrics_url)
    counters = triton_counters.parse(text)
    for row in counters.values():
        row["mean_batch"] = triton_counters.mean_batch(row) or 0.0
    return counters, triton_counters.parse_step_kernels(text)


async def _probe(base: str) -> dict[str, float]:
    """Audio seconds per TTS answer and per STT clip, for the real-time factors."""
    async with load_session(1, timeout_s=300) as client:
        tts = [await SENDERS["tts"](client, base, n) for n in (0, 1)]
        chat = json.loads((await _chat(client, base, 0)).body)
    import io

    import soundfile as sf

    tts_seconds = [sf.info(io.BytesIO(r.body)).duration for r in tts if r.status == 200]
    stt_seconds = sf.info(io.BytesIO(payloads.clip_wav("long"))).duration
    return {
        "tts_audio_s": round(statistics.mean(tts_seconds), 2) if tts_seconds else 0.0,
        "stt_clip_s": round(stt_seconds, 2),
        "chat_completion_tokens": float(chat.get("completion_tokens", 0)) if isinstance(chat, dict) else 0.0,
    }


def variant_environment(args: argparse.Namespace, variant: str) -> tuple[dict[str, str], list[str]]:
    """The environment that makes the stack (and the overhead bench) use ``variant``'s registry."""
    tuned = None
    if variant == "tuned":
        tuned = json.loads((args.work / "results" / "tune.json").read_text())["tuned"]
    registry = args.work / f"registry-{variant}.toml"
    models = bench_models(tuned, variant)
    large_v3 = "stt-large-v3" in overlay_names(variant)
    for name in args.drop.split(","):
        if name and len(models) > 1:
            models.pop(name, None)
    registry.write_text(dump_registry(models))
    env: dict[str, str] = {
        "MILO_REGISTRY": str(registry),
        "MILO_PROFILE": args.profile,
        "MILO_MODELS_DIR": str(args.work / ("models-large-v3" if large_v3 else "models")),
        "MILO_AUTH_ENABLED": "false",
        "MILO_REQUIRED_MODELS": json.dumps(list(models)),
        "MILO_TRITON_TIMEOUT_S": "600",
    }
    if large_v3:  # the other roles' weights, shared with the main folder
        for name in models:
            link = args.work / "models-large-v3" / "production" / name
            if name != "stt" and not link.exists():
                link.symlink_to(args.work / "models" / "production" / name)
    if args.profile == "embedded":  # a dry run of the phase on a machine without a GPU
        env["MILO_MODELS_DIR"] = str(REPO / "models")
    return env, list(models)


@contextlib.contextmanager
def stack_for(args: argparse.Namespace, variant: str, log: Path) -> Iterator[Any]:
    from loadtests.runner import local_stack

    env, models = variant_environment(args, variant)
    registry = Path(env["MILO_REGISTRY"])
    repository = None
    if args.server == "tritonserver":
        # The stock server reads the variant from its own repository, generated like the committed one.
        from milo_voice.registry import load_registry
        from milo_voice.triton_repository import write_configs

        repository = args.work / f"repository-{variant}"
        # Made anew: one left by a run of the variant with other models (another --drop) would serve
        # those too, and fail to load them (seen on 2026-12-01).
        shutil.rmtree(repository, ignore_errors=True)
        write_configs(load_registry(registry), repository, instance_kind="gpu" if args.profile != "embedded" else None)
    started = time.perf_counter()
    with (
        cuda_mps(args.work) if args.mps else contextlib.nullcontext(),
        local_stack(log, env, server=args.server, repository=repository, facade_workers=args.facade_workers) as stack,
    ):
        print(f"{variant}: stack ready in {time.perf_counter() - started:.0f} s", flush=True)
        yield stack, list(models), round(time.perf_counter() - started, 1)


def phase_served(args: argparse.Namespace) -> None:
    for variant in args.variants.split(","):
        log = args.work / f"stack-{variant}{_server_suffix(args)}.log"
        result: dict[str, Any] = {
            "variant": variant, "server": args.server, "facade_workers": args.facade_workers, "mps": args.mps,
            "gpu_sample_s": args.gpu_sample_s,
        }  # fmt: skip
        try:
            with stack_for(args, variant, log) as (stack, models, start_s):
                result["start_s"] = start_s
                result["memory_after_load"] = gpu_memory()
                result["probe"] = asyncio.run(_probe(stack.facade)) if "tts" in models else {}
                levels: list[dict[str, Any]] = []
                measured, skipped = variant_levels(variant, endpoint_levels(args.endpoints, args.levels), models)
                if skipped:
                    result["skipped"] = skipped
                    print(f"{variant}: not measured: {'; '.join(skipped)}", flush=True)
                # PyTriton guards Triton's statistics API with a token of its own making.
                statistics_api = stack.triton_http if args.server == "tritonserver" else None
                for endpoint, endpoint_levels_ in measured:
                    model = PAST_THE_FACADE.get(endpoint, endpoint)
                    reference = inprocess_rates(args.work, model) if model in models else {}
                    step_reference = inprocess_step_rates(args.work, model) if model in models else {}
                    base = f"http://{stack.triton_http}" if endpoint in PAST_THE_FACADE else stack.facade
                    for concurrency in endpoint_levels_:
                        level = asyncio.run(
                            run_level(
                                base, endpoint, concurrency, SERVED_SENDERS[endpoint],
                                args.seconds, args.warmup, f"http://{stack.metrics}/metrics", stack.pid,
                                args.gpu_sample_s, statistics_api,
                            )
                        )  # fmt: skip
                        row = {**asdict(level), **served_over_inprocess(level, reference, step_reference)}
                        levels.append(row)
                        print(level_line(variant, row), flush=True)
                result["levels"] = levels
                result["memory_after_load_test"] = gpu_memory()
                result["triton"], result["step_kernels"] = host_metrics(f"http://{stack.metrics}/metrics")
                if result["step_kernels"]:
                    print(
                        f"{variant}: translation's search steps, chosen at load: {result['step_kernels']}", flush=True
                    )
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
            print(f"{variant} failed: {exc}; log tail:\n{_tail(log)}", flush=True)
        save(args.work, f"served-{variant}{_server_suffix(args)}", result)


def endpoint_levels(endpoints: str, levels: list[int]) -> list[tuple[str, list[int]]]:
    """``--endpoints`` read: "stt,stt-short:1,tts" measures stt and tts at every level, stt-short at 1."""
    measured = []
    for item in filter(None, endpoints.split(",")):
        name, _, own = item.partition(":")
        if name not in SERVED_SENDERS:
            raise ValueError(f"unknown endpoint {name!r} (known: {sorted(SERVED_SENDERS)})")
        measured.append((name, [int(n) for n in own.split("/")] if own else levels))
    return measured


def variant_levels(
    variant: str, measured: list[tuple[str, list[int]]], models: list[str]
) -> tuple[list[tuple[str, list[int]]], list[str]]:
    """The levels of ``--endpoints`` that ``variant``'s stack measures, and why each other is not:
    its model is not loaded (``--drop``), or the variant's overlays all change another role's
    model (a variant such as ``stt-x2+stt-b32`` measures STT only)."""
    roles = {overlay.split("-")[0] for overlay in variant.split("+")}
    only_roles_changed = roles <= {"stt", "chat", "translate", "tts"}  # every overlay is a role's (not `tuned`)
    kept, skipped = [], []
    for endpoint, levels in measured:
        role = endpoint.split("-")[0]
        if only_roles_changed and role not in roles:
            skipped.append(f"{endpoint} (the variant changes {', '.join(sorted(roles))} only)")
        elif role not in models:
            skipped.append(f"{endpoint} (not loaded)")
        else:
            kept.append((endpoint, levels))
    return kept, skipped


def served_over_inprocess(
    level: Level, reference: dict[int, float], step_reference: dict[int, float] | None = None
) -> dict[str, Any]:
    """The level's throughput over the role's best rate in process at any batch, and at the batch
    Triton formed on average in the level (the nearest measured below it). A level served by a
    step-level search is also set beside the role's own step-level loop with as many requests in
    flight (``step_reference``, by requests in flight)."""
    if not reference:
        return {}
    steps: dict[str, Any] = {}
    searched = any("search_steps" in row for row in level.triton.values())
    if searched and step_reference and level.concurrency in step_reference:
        rate = step_reference[level.concurrency]
        steps = {
            "inprocess_steps": {"clients": level.concurrency, "rate": rate},
            "served_over_steps": round(level.throughput_rps / rate, 3),
        }
    best_batch = max(reference, key=lambda batch: reference[batch])
    formed = max((row.get("mean_batch") or 0.0 for row in level.triton.values()), default=0.0)
    at = max((batch for batch in reference if batch <= max(formed, 1.0)), default=min(reference))
    # The model that served the level: the one with the most requests in it.
    model = max(level.triton, key=lambda name: level.triton[name].get("requests") or 0, default=None)
    executions = level.executions.get(model, {}) if model else {}
    return {
        "inprocess_best": {"batch": best_batch, "rate": reference[best_batch]},
        "served_over_best": round(level.throughput_rps / reference[best_batch], 3),
        "inprocess_at_formed_batch": {"batch": at, "rate": reference[at]},
        "served_over_formed_batch": round(level.throughput_rps / reference[at], 3),
        **steps,
        **({"execution_times": executions_over_inprocess(executions, reference, level.seconds)} if executions else {}),
    }


def level_line(variant: str, row: dict[str, Any]) -> str:
    batches = ", ".join(f"{m} {t['mean_batch']}" for m, t in row["triton"].items())
    gpu, facade = row["gpu_utilisation"] or {}, row.get("facade_cpu") or {}
    return (
        f"{variant:<12} {row['endpoint']:<9} c={row['concurrency']:<3} {row['throughput_rps']:8.2f} req/s "
        f"P50 {row['p50_ms']:7.1f} P95 {row['p95_ms']:7.1f} P99 {row['p99_ms']:7.1f} ms errors {row['errors']} "
        f"| per execution: {batches or '-'} | GPU {gpu.get('mean', '-')}% "
        f"| facade {facade.get('cores', '-')} cores, {facade.get('ms_per_request', '-')} ms/request "
        f"| load generator {row.get('client_cores', '-')} cores "
        f"| served/in-process best {row.get('served_over_best', '-')}"
        + (f", its step-level loop {row['served_over_steps']}" if "served_over_steps" in row else "")
        + execution_times_line(row.get("execution_times"))
        + search_line(row.get("triton", {}))
        + batch_line(row.get("triton", {}))
    )


def batch_line(triton: dict[str, dict[str, float]]) -> str:
    """Each batched model's own time a batch over the level: in its process, and in the role."""
    return "".join(
        f" | {model}'s process: {row['batch_ms']} ms a batch, {row['role_ms']} ms of it in the role"
        for model, row in triton.items()
        if "batch_ms" in row
    )


def search_line(triton: dict[str, dict[str, float]]) -> str:
    """Each step-level search's steps over the level: how full, and what a step cost served."""
    return "".join(
        f" | {model}'s search: {row['sentences_per_step']} sentences a step, {row['step_ms']} ms a step"
        for model, row in triton.items()
        if "search_steps" in row
    )


def execution_times_line(times: dict[str, float] | None) -> str:
    if not times:
        return ""
    return (
        f" | an execution {times['served_ms_per_execution']} ms served, {times['inprocess_ms_per_execution']} ms"
        f" in process for the same batches ({times['served_over_inprocess_time']}x), busy {times['busy']}"
    )


def _server_suffix(args: argparse.Namespace) -> str:
    return result_suffix(args.server, args.mps, args.facade_workers)


def _tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# -- locust -------------------------------------------------------------------------------------


def phase_locust(args: argparse.Namespace) -> None:
    from loadtests.runner import build_parser, run_locust

    variant = args.variants.split(",")[0]
    name = f"locust-{variant}{_server_suffix(args)}"  # Locust's own files, and the result's name
    out = args.work / name
    out.mkdir(parents=True, exist_ok=True)
    locust_args = build_parser().parse_args(
        ["--users", str(args.users), "--spawn-rate", "4", "--duration", args.duration, "--report-only"]
    )
    result: dict[str, Any] = {
        "variant": variant, "server": args.server, "users": args.users, "duration": args.duration, "mps": args.mps,
        "facade_workers": args.facade_workers,
    }  # fmt: skip
    with stack_for(args, variant, out / "stack.log") as (stack, _models, start_s):
        result["start_s"] = start_s
        started = time.perf_counter()
        result["locust_exit"] = run_locust(locust_args, stack.facade, out)
        result["locust_s"] = round(time.perf_counter() - started, 1)
        result["memory"] = gpu_memory()
        result["triton"], result["step_kernels"] = host_metrics(f"http://{stack.metrics}/metrics")
        verdicts = gate(read_locust_stats(out / "locust_stats.csv"), dict(AUDIT_TARGETS_MS), 0.01)
        result["verdicts"] = [asdict(v) for v in verdicts]
        result["table"] = format_table(verdicts)
        # Saved before the stack stops, so that a call cut short while it stops keeps the figures.
        save(args.work, name, result)
        stopping = time.perf_counter()
    result["stop_s"] = round(time.perf_counter() - stopping, 1)
    save(args.work, name, result)


def phase_overhead(args: argparse.Namespace) -> None:
    """``loadtests.bench.overhead`` (hop by hop, one request at a time) on each variant's registry."""
    from loadtests.bench import overhead

    for variant in args.variants.split(","):
        env, _models = variant_environment(args, variant)
        os.environ.update(env)
        out = args.work / "results" / f"overhead-{variant}{_server_suffix(args)}"
        overhead.main(["--server", args.server, "--endpoints", args.endpoints, "--out", str(out)])


def phase_voice(args: argparse.Namespace) -> None:
    """The spoken turn (``loadtests.bench.voice_turn``) on a variant's stack: three calls against
    ``/v1/voice`` against the realtime WebSocket, with the variant's fixed reply lengths."""
    from loadtests.bench import voice_turn

    variant = args.variants.split(",")[0]  # one a call: a level of every way takes minutes
    out = args.work / f"voice-{variant}{_server_suffix(args)}"
    out.mkdir(parents=True, exist_ok=True)
    turn_args = voice_turn.build_parser().parse_args(
        ["--out", str(out), "--levels", ",".join(map(str, args.levels)), "--seconds", str(args.seconds),
         "--max-tokens", str(args.max_tokens), *(["--methods", args.methods] if args.methods else [])]
    )  # fmt: skip
    turn_args.fixed_length_replies = True  # the variant's chat serves the fixed-length role
    with stack_for(args, variant, out / "stack.log") as (stack, _models, _start):
        machine = f"{gpu_memory()['gpu'] or 'no GPU'} ({args.server}, variant {variant})"
        result = voice_turn.run(turn_args, stack.facade, machine, f"http://{stack.metrics}/metrics")
        result["memory"] = gpu_memory()
    save(args.work, f"voice-{variant}{_server_suffix(args)}", result)
