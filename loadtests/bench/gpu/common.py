"""What every phase of the GPU benchmark shares: the fixed workloads, timing, GPU memory, results."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtests.processes import REPO

REGISTRY = REPO / "model_repository" / "registry.toml"
STT_TOKENS = 32  # per 30 s window, as in the in-process reference
TRANSLATE_TOKENS = 24  # a sentence of about 15 words
CHAT_TOKENS = 64  # a short spoken answer (the Locust suites ask for 64 too)
LEVELS = (1, 8, 32)
CHAT_CONCURRENCY = (1, 4, 16, 32)  # conversations decoded together in process
# Reference measured in process on an H100 (CTranslate2 fp16, greedy, 32 tokens per window).
STT_REFERENCE = {
    "large-v3-turbo": {"batch1_ms": 70.0, "batch32_clips_s": 36.0},
    "large-v3": {"batch1_ms": 244.0, "batch32_clips_s": 25.7},
}


def nvidia_smi(query: str, *options: str, timeout_s: float | None = None) -> str | None:
    """nvidia-smi's CSV answer to ``--query-<query>``; None where there is no NVIDIA driver (a CPU
    dry run) or it did not answer within ``timeout_s``."""
    command = ["nvidia-smi", *options, f"--query-{query}", "--format=csv,noheader,nounits"]
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout_s).stdout.strip()
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None


def gpu_memory() -> dict[str, Any]:
    """Memory in use on the GPU (MiB), in total and per process, as nvidia-smi reports it."""
    total = nvidia_smi("gpu=name,memory.used,memory.total") or ""
    apps = nvidia_smi("compute-apps=pid,process_name,used_memory") or ""
    name, used, capacity = ([*total.split(", "), "", "", ""])[:3]
    return {
        "gpu": name,
        "used_mib": int(used) if used.isdigit() else None,
        "total_mib": int(capacity) if capacity.isdigit() else None,
        "processes": [line.split(", ") for line in apps.splitlines() if line],
    }


def timed(function: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``function`` over ``repeats`` calls, after ``warmup`` calls."""
    return statistics.median(timed_calls(function, repeats, 0.0, warmup))


def timed_calls(function: Callable[[], Any], repeats: int, seconds: float, warmup: int = 2) -> list[float]:
    """Seconds of each call of ``function``, after ``warmup`` calls: at least ``repeats`` calls, and
    more until they have taken ``seconds`` in all."""
    for _ in range(warmup):
        function()
    samples: list[float] = []
    while len(samples) < repeats or sum(samples) < seconds:
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return samples


def batch_row(batch: int, samples: list[float]) -> dict[str, float]:
    """A batch size's in-process row: the median call as ms and requests a second (what the served
    phase compares with), and the spread of the calls behind it."""
    median = statistics.median(samples)
    return {
        "ms": round(median * 1000, 1),
        "requests_s": round(batch / median, 1),
        "ms_min": round(min(samples) * 1000, 1),
        "ms_max": round(max(samples) * 1000, 1),
        "calls": len(samples),
    }


# The facade's processes in the benchmark's stacks, as its image runs them
# (deploy/docker/facade.Dockerfile): through one, translation at 64 clients queued behind a
# busy event loop (docs/benchmarks.md, section 4, "every goal in one lease, through two facade
# processes").
FACADE_WORKERS = 2


def result_suffix(server: str, mps: bool = False, facade_workers: int = 1) -> str:
    """What results are named after besides the variant: the server, MPS where it ran, and the facade's
    processes where there were several."""
    return (
        ("" if server == "pytriton" else f"-{server}")
        + ("-mps" if mps else "")
        + (f"-w{facade_workers}" if facade_workers > 1 else "")
    )


def save(work: Path, phase: str, data: dict[str, Any]) -> Path:
    out = work / "results" / f"{phase}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), **data}
    out.write_text(json.dumps(data, indent=1))
    print(json.dumps(data, indent=1)[:6000], flush=True)
    return out
