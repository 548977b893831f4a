"""The GPU benchmark: production-shaped models on a lent H100/H200, served by the PyTriton host.

Run on the GPU machine through ``loadtests/bench/gpu_device.sh`` (which sets up the libraries),
one phase per call; every phase keeps its state under ``--work`` and writes its results to
``--work/results/<phase>.json``:

  build      the production shapes with seeded weights (``loadtests.bench.shapes``)
  inprocess  the role classes called directly on the GPU: the STT reference (turbo and large-v3
             at batch 1, 8 and 32, 32 tokens per 30 s window), batch sweeps of TTS and translation,
             instance sweep of chat, GPU memory per model; then ``tune`` picks batch sizes and
             instance counts from those curves and writes the tuned registry
  served     the whole stack (facade -> Triton -> model) with one registry variant: single-request
             latency, throughput at several concurrencies, real-time factors, tokens/s, GPU memory,
             Triton's own batch statistics
  locust     the Locust mixed scenario against the stack, gated on the audit table
  overhead   ``loadtests.bench.overhead`` on a variant: one request at a time, in process, on
             Triton directly and through the facade (where the served time goes, hop by hop)

The results are read in ``docs/benchmarks.md`` (section 4).

Registry variants: ``configured`` (model_repository/registry.toml as committed), ``unbatched``
(max_batch_size 1), ``tuned`` (from ``inprocess``), ``stt-no-timestamps``, ``stt-large-v3`` and
``stt-large-v3-no-timestamps`` (STT measured alone), or one model's name (that model alone).
Each variant fixes generation lengths, since seeded weights stop at random places: STT decodes 32
tokens per window (the reference's workload), translation 24 tokens, chat ``max_tokens`` (64).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from loadtests import payloads
from loadtests.audit import AUDIT_TARGETS_MS, format_table, gate, read_locust_stats
from loadtests.bench.batching import SENDERS, Point, Send, measure
from loadtests.processes import REPO

REGISTRY = REPO / "model_repository" / "registry.toml"
STT_TOKENS = 32  # per 30 s window, as in the in-process reference
TRANSLATE_TOKENS = 24  # a sentence of about 15 words
CHAT_TOKENS = 64  # a short spoken answer (the Locust suites ask for 64 too)
LEVELS = (1, 8, 32)
CHAT_CONCURRENCY = (1, 4, 16, 32)  # conversations decoded together in process
# Requests per level at least (and twice the concurrency): a stable median in a few seconds.
MIN_REQUESTS = {"tts": 32, "stt": 16, "translate": 64, "chat": 8}
# Reference measured in process on an H100 (CTranslate2 fp16, greedy, 32 tokens per window).
STT_REFERENCE = {
    "large-v3-turbo": {"batch1_ms": 70.0, "batch32_clips_s": 36.0},
    "large-v3": {"batch1_ms": 244.0, "batch32_clips_s": 25.7},
}


# -- registry variants --------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_registry(models: dict[str, dict[str, Any]]) -> str:
    lines = ["# Written by loadtests.bench.gpu: a benchmark variant of model_repository/registry.toml."]
    for name, table in models.items():
        lines.append(f"\n[models.{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if k != "weights"]
        for profile, weights in table.get("weights", {}).items():
            lines.append(f"\n[models.{name}.weights.{profile}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in weights.items()]
    return "\n".join(lines) + "\n"


def bench_models(tuned: dict[str, dict[str, Any]] | None = None, variant: str = "configured") -> dict[str, Any]:
    """The committed registry with fixed generation lengths, changed as ``variant`` says."""
    models = tomllib.loads(REGISTRY.read_text())["models"]
    models["stt"]["params"]["fixed_new_tokens"] = STT_TOKENS
    models["translate"]["params"].update(min_decoding_length=TRANSLATE_TOKENS, max_decoding_length=TRANSLATE_TOKENS)
    models["chat"]["params"]["ignore_eos"] = True
    if variant == "unbatched":
        for table in models.values():
            table.update(max_batch_size=1, preferred_batch_sizes=[], max_queue_delay_us=0)
        models["chat"]["params"].update(slots=1, gpu_slots=1)  # chat batches in the role: one slot
    elif variant == "tuned":
        for name, change in (tuned or {}).items():
            models[name].update(
                max_batch_size=change["max_batch_size"],
                preferred_batch_sizes=change["preferred_batch_sizes"],
                instances={"count": change["instances"], "kind": "auto"},
            )
    elif variant.startswith("stt-"):
        # Only STT is measured; the facade still expects every role in the registry.
        # stt-[large-v3-][no-timestamps][-x2][-b32][-numpy][-q5|-q1][-ct2enc][-ct2dec]
        stt = models["stt"]
        stt["params"]["timestamps"] = "no-timestamps" not in variant
        if "-x2" in variant:
            # Two instances (with the stock server, two processes: CPU work in parallel), each
            # batching up to 8: the knee of the in-process curve (docs/benchmarks.md, section 4).
            stt.update(max_batch_size=8, preferred_batch_sizes=[4, 8], instances={"count": 2, "kind": "auto"})
        if variant.endswith("-numpy") or "-numpy-" in variant:
            stt["params"]["features"] = "numpy"  # faster-whisper's NumPy features, one window at a time
        if "-q5" in variant:
            stt["max_queue_delay_us"] = 5000
        if "-b32" in variant:  # batches up to 32: with the torch encoder the curve goes on past 8
            stt.update(max_batch_size=32, preferred_batch_sizes=[8, 16, 32])
        if "-q1" in variant:
            stt["max_queue_delay_us"] = 1000
        if "-ct2enc" in variant:
            # CTranslate2's own encoder (no flash attention), and so its decoder too
            stt["params"].update(encoder="ctranslate2", decoder="ctranslate2")
        if "-ct2dec" in variant:
            stt["params"]["decoder"] = "ctranslate2"  # CTranslate2's decoder (no CUDA graphs)
    elif variant == "audit":
        # What the GPU runs found for the audit table: STT text only, 2 instances of batch 8, 1 ms
        # queue delay, features and encoder in torch on the GPU; translation computed in float16 (beam 2 kept).
        models = bench_models(None, "stt-no-timestamps-x2-q1")
        models["translate"]["params"]["gpu_compute_type"] = "float16"
    elif variant.startswith("translate-"):
        # Only translation is measured: translate-base, translate-beam1, translate-fp16.
        params = models["translate"]["params"]
        params["gpu_compute_type"] = "int8_float16"  # the first runs' setting
        if variant == "translate-beam1":
            params["beam_size"] = 1
        elif variant == "translate-fp16":
            params["gpu_compute_type"] = "float16"
        elif variant != "translate-base":
            raise ValueError(f"unknown variant {variant!r}")
    elif variant.startswith("chat-"):
        # Only chat is measured (chat-unbatched: one slot; chat-sN: N slots; chat-xN: N instances).
        if variant == "chat-unbatched":
            models["chat"]["params"].update(slots=1, gpu_slots=1)
        elif re.fullmatch(r"chat-s\d+", variant):
            slots = int(variant.removeprefix("chat-s"))
            models["chat"]["params"].update(slots=slots, gpu_slots=slots)
        elif re.fullmatch(r"chat-x\d+", variant):
            models["chat"]["instances"] = {"count": int(variant.removeprefix("chat-x")), "kind": "auto"}
        else:
            raise ValueError(f"unknown variant {variant!r}")
    elif variant in models:  # one model alone, e.g. "chat"
        models = {variant: models[variant]}
    elif variant != "configured":
        raise ValueError(f"unknown variant {variant!r}")
    return models


# -- helpers ---------------------------------------------------------------------------------


def gpu_memory() -> dict[str, Any]:
    """Memory in use on the GPU (MiB), in total and per process, as nvidia-smi reports it."""

    def query(what: str) -> str:
        try:
            command = ["nvidia-smi", f"--query-{what}", "--format=csv,noheader,nounits"]
            return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()
        except FileNotFoundError:  # no NVIDIA driver: a CPU dry run
            return ""

    total = query("gpu=name,memory.used,memory.total")
    apps = query("compute-apps=pid,process_name,used_memory")
    name, used, capacity = ([*total.split(", "), "", "", ""])[:3]
    return {
        "gpu": name,
        "used_mib": int(used) if used.isdigit() else None,
        "total_mib": int(capacity) if capacity.isdigit() else None,
        "processes": [line.split(", ") for line in apps.splitlines() if line],
    }


def timed(function: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``function`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def save(work: Path, phase: str, data: dict[str, Any]) -> Path:
    out = work / "results" / f"{phase}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), **data}
    out.write_text(json.dumps(data, indent=1))
    print(json.dumps(data, indent=1)[:6000], flush=True)
    return out


# -- build -------------------------------------------------------------------------------------


def phase_build(args: argparse.Namespace) -> None:
    from loadtests.bench import shapes

    assets = Path(args.assets)
    seconds = shapes.build_all(
        args.work / "models", "large-v3-turbo", assets / "whisper-tokenizer.json",
        assets / "chat-tokenizer.json", "cuda", [x for x in args.only.split(",") if x],
    )  # fmt: skip
    if (not args.only or "stt" in args.only.split(",")) and not args.no_large_v3:
        started = time.perf_counter()
        target = args.work / "models-large-v3" / "production" / "stt"
        shapes.build_whisper(target, shapes.WHISPER_SHAPES["large-v3"], assets / "whisper-tokenizer.json", "cuda")
        (target / ".complete").write_text("seeded")
        seconds["stt large-v3"] = round(time.perf_counter() - started, 1)
    sizes = {
        str(p.relative_to(args.work)): round(p.stat().st_size / 2**20, 1)
        for p in args.work.glob("models*/production/**/*") if p.is_file() and p.stat().st_size > 2**20
    }  # fmt: skip
    save(args.work, "build", {"seconds": seconds, "sizes_mib": sizes})


# -- in process ----------------------------------------------------------------------------------


def _clip(kind: str = "long") -> Any:
    import io

    import soundfile as sf

    audio, _ = sf.read(io.BytesIO(payloads.clip_wav(kind)), dtype="float32")
    return audio


def _memory_used_mib() -> float:
    import torch

    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def stt_inprocess(path: Path) -> dict[str, Any]:
    """The reference (CTranslate2 alone, features ready) and the role in three settings, side by side:
    all CTranslate2, the encoder in torch, encoder and decoder in torch."""
    import ctranslate2
    import numpy as np
    import torch

    from contract.records import SttRequest
    from milo_voice.roles.stt import SpeechToText, SttOptions

    def role(encoder: str, decoder: str) -> tuple[SpeechToText, Any, int]:
        before = _memory_used_mib()
        options = SttOptions(compute_type="float16", fixed_new_tokens=STT_TOKENS, encoder=encoder, decoder=decoder)  # type: ignore[arg-type]
        made = SpeechToText(str(path), device="cuda", options=options)
        return made, made.backend, round(_memory_used_mib() - before)

    stt, _, memory = role("ctranslate2", "ctranslate2")
    rows: dict[str, Any] = {"memory_mib": memory}
    fast, fast_backend, rows["torch_encoder_memory_mib"] = role("torch", "ctranslate2")
    fastest, fastest_backend, rows["torch_decoder_memory_mib"] = role("torch", "torch")
    audio = _clip("long")
    features = np.ascontiguousarray(stt.features.one(audio))
    suppress = [-1, stt.tokenizer.eot]
    for batch in (1, 8, 32):
        requests = [SttRequest(audio, "fr")] * batch
        tokens = stt.transcribe_batch(requests)[0].tokens
        stacked_np = np.stack([features] * batch)
        stacked = ctranslate2.StorageView.from_array(stacked_np)
        stacked_gpu = torch.from_numpy(stacked_np).cuda()
        states = fast_backend.encoder(stacked_gpu)
        states_view = ctranslate2.StorageView.from_array(states)
        torch.cuda.synchronize()
        # Without timestamps (<|notimestamps|> in the prompt) CTranslate2 skips its timestamp rules.
        prompts = {
            "model": [stt.prompts("fr")] * batch,
            "no_timestamps": [[*stt.prompts("fr"), stt.tokenizer.no_timestamps]] * batch,
        }

        def decode(prompt: list[list[int]], stacked: Any = stacked) -> None:
            encoded = stt.model.encode(stacked, to_cpu=False)
            stt.model.generate(encoded, prompt, beam_size=1, max_length=2 * STT_TOKENS, suppress_tokens=suppress)

        def ct2_encode(stacked: Any = stacked) -> None:
            stt.model.encode(stacked, to_cpu=False)

        def torch_encode(stacked_gpu: Any = stacked_gpu) -> None:
            fast_backend.encoder(stacked_gpu)
            torch.cuda.synchronize()

        # Decoding alone, from the same ready encoder output (the torch encoder's), timestamps on.
        def ct2_decode(prompt: list[list[int]] = prompts["model"], states_view: Any = states_view) -> None:
            stt.model.generate(states_view, prompt, beam_size=1, max_length=2 * STT_TOKENS, suppress_tokens=suppress)

        def torch_decode(prompt: list[list[int]] = prompts["model"], states: Any = states) -> None:
            fastest_backend.decoder.start(states).generate(prompt, STT_TOKENS, suppress)

        repeats = 10 if batch == 1 else 5
        role_ms = timed(lambda requests=requests: stt.transcribe_batch(requests), repeats)
        role_torch_encoder = timed(lambda requests=requests: fast.transcribe_batch(requests), repeats)
        role_torch = timed(lambda requests=requests: fastest.transcribe_batch(requests), repeats)
        model = timed(functools.partial(decode, prompts["model"]), repeats)
        rows[f"batch{batch}"] = {
            "tokens_per_window": tokens,
            "role_ms": round(role_ms * 1000, 1),
            "role_torch_encoder_ms": round(role_torch_encoder * 1000, 1),
            "role_torch_ms": round(role_torch * 1000, 1),
            "model_ms": round(model * 1000, 1),
            "role_clips_s": round(batch / role_ms, 1),
            "role_torch_encoder_clips_s": round(batch / role_torch_encoder, 1),
            "role_torch_clips_s": round(batch / role_torch, 1),
            "model_clips_s": round(batch / model, 1),
            "ct2_encoder_ms": round(timed(ct2_encode, repeats) * 1000, 1),
            "torch_encoder_ms": round(timed(torch_encode, repeats) * 1000, 1),
            "ct2_decode_ms": round(timed(ct2_decode, repeats) * 1000, 1),
            "torch_decode_ms": round(timed(torch_decode, repeats) * 1000, 1),
        }
        no_timestamps = timed(functools.partial(decode, prompts["no_timestamps"]), repeats)
        rows[f"batch{batch}"]["no_timestamps_ms"] = round(no_timestamps * 1000, 1)
        if batch == 1:
            rows["encoder_agreement"] = _encoder_agreement(stt, fast, stacked, stacked_gpu, requests)
            rows["decoder_agreement"] = _decoder_agreement(fast, fastest, requests)
    return rows


def _decoder_agreement(reference: Any, torch_decoder: Any, requests: list[Any]) -> dict[str, Any]:
    """The torch decoder's float16 transcript against CTranslate2's, from the same torch encoder."""
    expected, got = reference.transcribe_batch(requests)[0], torch_decoder.transcribe_batch(requests)[0]
    return {
        "same_text": expected.text == got.text,
        "same_segments": [(s.start, s.end) for s in expected.segments] == [(s.start, s.end) for s in got.segments],
        "confidence_ct2": expected.confidence,
        "confidence_torch": got.confidence,
        "text_ct2": expected.text[:200],
        "text_torch": got.text[:200],
    }


def _encoder_agreement(stt: Any, fast: Any, stacked: Any, stacked_gpu: Any, requests: list[Any]) -> dict[str, Any]:
    """How far the torch encoder's float16 output is from CTranslate2's, and what that does to decoding."""
    import numpy as np
    import torch

    reference = torch.as_tensor(stt.model.encode(stacked, to_cpu=False), device="cuda").float()
    ours = fast.backend.encoder(stacked_gpu).float()  # type: ignore[union-attr]
    with_ct2, with_torch = stt.transcribe_batch(requests)[0], fast.transcribe_batch(requests)[0]
    first = [s.text for s in with_ct2.segments], [s.text for s in with_torch.segments]
    return {
        "max_abs_diff": round(float((reference - ours).abs().max()), 4),
        "max_abs_value": round(float(reference.abs().max()), 2),
        "cosine": round(float(torch.nn.functional.cosine_similarity(reference.flatten(), ours.flatten(), dim=0)), 6),
        "same_text": first[0] == first[1],
        "text_ct2": " ".join(first[0])[:200],
        "text_torch": " ".join(first[1])[:200],
        "finite": bool(np.isfinite(ours.cpu().numpy()).all()),
    }


def tts_inprocess(path: Path) -> dict[str, Any]:
    from contract.records import TtsRequest
    from milo_voice.roles.tts import TextToSpeech

    before = _memory_used_mib()
    voices = {"mg": path / "mms-tts-mlg", "fr": path / "mms-tts-fra"}
    tts = TextToSpeech(voices, device="cuda")
    rows: dict[str, Any] = {"memory_mib": round(_memory_used_mib() - before), "batches": {}}
    text = payloads.LONG_TEXTS["mg"][:120]
    for batch in (1, 2, 4, 8, 16):
        requests = [TtsRequest(text, "mg")] * batch
        audio_s = sum(s.duration for s in tts.synthesize_batch(requests))
        seconds = timed(lambda requests=requests: tts.synthesize_batch(requests), 5)
        rows["batches"][batch] = {
            "ms": round(seconds * 1000, 1),
            "requests_s": round(batch / seconds, 1),
            "audio_s_per_s": round(audio_s / seconds, 1),
            "rtf": round(seconds / audio_s, 4),
        }
    return rows


def translate_inprocess(path: Path) -> dict[str, Any]:
    from contract.records import TranslateRequest
    from milo_voice.roles.translate import Translator

    before = _memory_used_mib()
    translator = Translator(
        path, device="cuda", compute_type="int8_float16",
        min_decoding_length=TRANSLATE_TOKENS, max_decoding_length=TRANSLATE_TOKENS,
    )  # fmt: skip
    rows: dict[str, Any] = {"memory_mib": round(_memory_used_mib() - before), "batches": {}}
    source, target, text = payloads.TRANSLATE_LONG[0]
    for batch in (1, 4, 8, 16, 32, 64):
        requests = [TranslateRequest(text, source, target)] * batch
        seconds = timed(lambda requests=requests: translator.translate_batch(requests), 5)
        rows["batches"][batch] = {"ms": round(seconds * 1000, 1), "requests_s": round(batch / seconds, 1)}
    return rows


def chat_inprocess(path: Path) -> dict[str, Any]:
    """The chat role alone on the GPU: one reply, then conversations decoded together (continuous batching)."""
    from contract.records import ChatMessage, ChatRequest
    from milo_voice.roles.chat import LocalChat

    request = ChatRequest([ChatMessage("user", payloads.CHAT_SCRIPT[2])], max_tokens=CHAT_TOKENS)
    rows: dict[str, Any] = {"concurrent": {}}
    before = _memory_used_mib()
    chat = LocalChat(path, n_ctx=4096, slots=max(CHAT_CONCURRENCY), n_gpu_layers=-1, ignore_eos=True)
    try:
        rows["memory_mib"] = round(_memory_used_mib() - before)
        reply = chat.complete(request)
        seconds = timed(lambda: chat.complete(request), 5)
        rows["single"] = {
            "ms": round(seconds * 1000, 1),
            "completion_tokens": reply.completion_tokens,
            "prompt_tokens": reply.prompt_tokens,
            "tokens_s": round(reply.completion_tokens / seconds, 1),
        }
        for count in CHAT_CONCURRENCY:
            batch = [request] * count
            chat.complete_batch(batch)
            seconds = timed(lambda batch=batch: chat.complete_batch(batch), 3)
            rows["concurrent"][count] = {
                "tokens_s": round(count * reply.completion_tokens / seconds, 1),
                "ms_per_reply": round(seconds * 1000, 1),
            }
    finally:
        chat.close()
    return rows


def phase_inprocess(args: argparse.Namespace) -> None:
    import torch

    torch.cuda.init()
    models = args.work / "models" / "production"
    results: dict[str, Any] = {"gpu": gpu_memory()["gpu"]}
    only = [x for x in args.only.split(",") if x]
    steps: dict[str, Callable[[], Any]] = {
        "stt": lambda: {
            "large-v3-turbo": stt_inprocess(models / "stt"),
            "large-v3": stt_inprocess(args.work / "models-large-v3" / "production" / "stt"),
        },
        "tts": lambda: tts_inprocess(models / "tts"),
        "translate": lambda: translate_inprocess(models / "translate"),
        "chat": lambda: chat_inprocess(models / "chat" / "model.gguf"),
    }
    for name, step in steps.items():
        if only and name not in only:
            continue
        try:
            results[name] = step()
        except Exception as exc:  # one role failing must not lose the others' figures
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(name, json.dumps(results[name])[:2000], flush=True)
    previous = args.work / "results" / "inprocess.json"
    if only and previous.exists():
        results = {**json.loads(previous.read_text()), **results}
    save(args.work, "inprocess", results)
    phase_tune(args)


# -- tuning ---------------------------------------------------------------------------------------


def knee(curve: dict[int, float], share: float = 0.9) -> int:
    """The smallest batch size (or instance count) reaching ``share`` of the best throughput.

    ``curve`` maps it to requests (or tokens) per second. Past the knee a larger batch buys
    little throughput. A large maximum costs a lone request nothing (Triton's batcher does
    not wait for a full batch, only ``max_queue_delay_us``), so the knee, not a latency
    budget, is what bounds it: under a queue, one batch of N beats N runs of one.
    """
    best = max(curve.values())
    return min(size for size, rate in curve.items() if rate >= share * best)


def _preferred(max_batch: int) -> list[int]:
    return [b for b in (max_batch // 4, max_batch // 2, max_batch) if b >= 2] or [max_batch]


def phase_tune(args: argparse.Namespace) -> None:
    """Batch sizes and instance counts from the in-process curves, as a tuned registry."""
    data = json.loads((args.work / "results" / "inprocess.json").read_text())
    tuned: dict[str, dict[str, Any]] = {}
    reasons: dict[str, str] = {}
    stt = data.get("stt", {}).get("large-v3-turbo", {})
    if "batch1" in stt:
        # The role as a GPU host runs it by default: encoder and decoder in torch (older runs: less).
        key = next(
            k for k in ("role_torch_clips_s", "role_torch_encoder_clips_s", "role_clips_s") if k in stt["batch1"]
        )
        curve = {b: stt[f"batch{b}"][key] for b in (1, 8, 32)}
        tuned["stt"] = {"max_batch_size": knee(curve), "instances": 1}
        reasons["stt"] = f"clips/s by batch {curve}"
    for name in ("tts", "translate"):
        batches = data.get(name, {}).get("batches")
        if batches:
            curve = {int(b): row["requests_s"] for b, row in batches.items()}
            tuned[name] = {"max_batch_size": knee(curve), "instances": 1}
            reasons[name] = f"requests/s by batch {curve}"
    # Chat batches in the role (continuous batching): its slots are measured by bench/chat_batching.py.
    for change in tuned.values():
        change["preferred_batch_sizes"] = _preferred(change["max_batch_size"])
    save(args.work, "tune", {"tuned": tuned, "reasons": reasons})


# -- served -------------------------------------------------------------------------------------


async def _chat(client: httpx.AsyncClient, base: str, n: int) -> httpx.Response:
    body = {"message": payloads.CHAT_SCRIPT[n % 3], "language": "mg", "max_tokens": CHAT_TOKENS}
    return await client.post(f"{base}/v1/chat", json=body)


async def _stt_long(client: httpx.AsyncClient, base: str, n: int) -> httpx.Response:
    files = {"file": ("clip.wav", payloads.clip_wav("long"), "audio/wav")}
    return await client.post(f"{base}/v1/stt", files=files, data={"language": "fr"})


SERVED_SENDERS: dict[str, Send] = {
    "tts": SENDERS["tts"],
    "stt": _stt_long,
    "translate": SENDERS["translate"],
    "chat": _chat,
}


def triton_batch_stats(metrics_url: str) -> dict[str, dict[str, float]]:
    return parse_batch_stats(urllib.request.urlopen(metrics_url, timeout=5).read().decode())


def parse_batch_stats(text: str) -> dict[str, dict[str, float]]:
    """Per model: requests, executions (batches) and their ratio, from Triton's Prometheus text."""
    stats: dict[str, dict[str, float]] = {}
    for metric, key in (("nv_inference_request_success", "requests"), ("nv_inference_exec_count", "executions")):
        for model, value in re.findall(rf'^{metric}{{model="([^"]+)"[^}}]*}} ([0-9.e+]+)$', text, re.M):
            stats.setdefault(model, {})[key] = stats.get(model, {}).get(key, 0.0) + float(value)
    for row in stats.values():
        if row.get("executions"):
            row["mean_batch"] = round(row.get("requests", 0.0) / row["executions"], 2)
    return stats


async def _probe(base: str) -> dict[str, float]:
    """Audio seconds per TTS answer and per STT clip, for the real-time factors."""
    async with httpx.AsyncClient(timeout=300) as client:
        tts = [await SENDERS["tts"](client, base, n) for n in (0, 1)]
        chat = (await _chat(client, base, 0)).json()
    import io

    import soundfile as sf

    tts_seconds = [sf.info(io.BytesIO(r.content)).duration for r in tts if r.status_code == 200]
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
    for name in args.drop.split(","):
        if name and len(models) > 1:
            models.pop(name, None)
    registry.write_text(dump_registry(models))
    env: dict[str, str] = {
        "MILO_REGISTRY": str(registry),
        "MILO_PROFILE": args.profile,
        "MILO_MODELS_DIR": str(args.work / ("models-large-v3" if variant.startswith("stt-large-v3") else "models")),
        "MILO_AUTH_ENABLED": "false",
        "MILO_REQUIRED_MODELS": json.dumps(list(models)),
        "MILO_TRITON_TIMEOUT_S": "600",
    }
    if variant.startswith("stt-large-v3"):  # the other roles' weights, shared with the main folder
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
        write_configs(load_registry(registry), repository, instance_kind="gpu" if args.profile != "embedded" else None)
    started = time.perf_counter()
    with local_stack(log, env, args.server, repository) as stack:
        print(f"{variant}: stack ready in {time.perf_counter() - started:.0f} s", flush=True)
        yield stack, list(models), round(time.perf_counter() - started, 1)


def phase_served(args: argparse.Namespace) -> None:
    for variant in args.variants.split(","):
        log = args.work / f"stack-{variant}{_server_suffix(args)}.log"
        result: dict[str, Any] = {"variant": variant, "server": args.server}
        try:
            with stack_for(args, variant, log) as (stack, models, start_s):
                result["start_s"] = start_s
                result["memory_after_load"] = gpu_memory()
                result["probe"] = asyncio.run(_probe(stack.facade)) if "tts" in models else {}
                points: list[Point] = []
                measured = (
                    (variant.split("-")[0],) if variant.split("-")[0] in ("stt", "chat", "translate") else
                    args.endpoints.split(",")
                )  # fmt: skip
                for endpoint in [e for e in measured if e in models]:
                    for level in args.levels:
                        total = max(MIN_REQUESTS[endpoint], 2 * level)
                        point = asyncio.run(
                            measure(variant, stack.facade, endpoint, level, total, SERVED_SENDERS[endpoint])
                        )
                        points.append(point)
                        print(
                            f"{variant:<12} {endpoint:<9} c={level:<3} {point.throughput_rps:8.2f} req/s "
                            f"P50 {point.p50_ms:8.1f} ms P95 {point.p95_ms:8.1f} ms errors {point.errors}",
                            flush=True,
                        )
                result["points"] = [asdict(p) for p in points]
                result["memory_after_load_test"] = gpu_memory()
                result["triton"] = triton_batch_stats(f"http://{stack.metrics}/metrics")
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
            print(f"{variant} failed: {exc}; log tail:\n{_tail(log)}", flush=True)
        save(args.work, f"served-{variant}{_server_suffix(args)}", result)


def _server_suffix(args: argparse.Namespace) -> str:
    return "" if args.server == "pytriton" else f"-{args.server}"


def _tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# -- locust -------------------------------------------------------------------------------------


def phase_locust(args: argparse.Namespace) -> None:
    from loadtests.runner import build_parser, run_locust

    variant = args.variants.split(",")[0]
    out = args.work / f"locust-{variant}{_server_suffix(args)}"
    out.mkdir(parents=True, exist_ok=True)
    locust_args = build_parser().parse_args(
        ["--users", str(args.users), "--spawn-rate", "4", "--duration", args.duration, "--report-only"]
    )
    result: dict[str, Any] = {"variant": variant, "server": args.server, "users": args.users, "duration": args.duration}
    with stack_for(args, variant, out / "stack.log") as (stack, _models, _start):
        code = run_locust(locust_args, stack.facade, out)
        result["locust_exit"] = code
        result["memory"] = gpu_memory()
        result["triton"] = triton_batch_stats(f"http://{stack.metrics}/metrics")
    verdicts = gate(read_locust_stats(out / "locust_stats.csv"), dict(AUDIT_TARGETS_MS), 0.01)
    result["verdicts"] = [asdict(v) for v in verdicts]
    result["table"] = format_table(verdicts)
    save(args.work, f"locust-{variant}{_server_suffix(args)}", result)


# -- overhead ------------------------------------------------------------------------------------


def phase_overhead(args: argparse.Namespace) -> None:
    """``loadtests.bench.overhead`` (hop by hop, one request at a time) on each variant's registry."""
    from loadtests.bench import overhead

    for variant in args.variants.split(","):
        env, _models = variant_environment(args, variant)
        os.environ.update(env)
        out = args.work / "results" / f"overhead-{variant}{_server_suffix(args)}"
        overhead.main(["--server", args.server, "--endpoints", args.endpoints, "--out", str(out)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=["build", "inprocess", "tune", "served", "locust", "overhead"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/milo-gpu"))
    parser.add_argument("--assets", default=os.environ.get("MILO_GPU_ASSETS", str(REPO / ".gpu-assets")))
    parser.add_argument("--only", default="", help="build/inprocess: a subset of stt,tts,translate,chat")
    parser.add_argument("--no-large-v3", action="store_true", help="build: the turbo STT shape only")
    parser.add_argument("--variants", default="configured,unbatched", help="served/locust: registry variants")
    parser.add_argument("--endpoints", default="stt,tts,translate,chat", help="served: endpoints measured")
    parser.add_argument("--drop", default="", help="served/locust: models left out of the variants")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--levels", type=lambda text: [int(x) for x in text.split(",")], default=list(LEVELS))
    parser.add_argument("--profile", default="production", help="embedded: dry-run served/locust without a GPU")
    parser.add_argument("--duration", default="60s")
    parser.add_argument(
        "--server", choices=("pytriton", "tritonserver"), default="pytriton", help="served/locust: which Triton"
    )
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    phases: dict[str, Callable[[argparse.Namespace], None]] = {
        "build": phase_build, "inprocess": phase_inprocess, "tune": phase_tune,
        "served": phase_served, "locust": phase_locust, "overhead": phase_overhead,
    }  # fmt: skip
    phases[args.phase](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
