"""One concurrency level of the served benchmark, run for a fixed time, and what it did.

A level sends for ``warmup_s`` first (batches and caches settle; nothing is counted), then for
``seconds``: every client sends its next request as soon as its last is answered. Counted are the
requests answered inside the window (throughput), the latency of those started inside it
(P50/P95/P99), Triton's per-model counters read at the window's start and end (requests per
execution: the batches the level formed; and from its statistics API, the executions and their
mean compute time per batch size), the GPU's utilisation sampled through it, and the CPU
time the facade's processes spent in it (per request answered, and in cores), and the load
generator's own (one process, one event loop: near a core, it and not the stack sets the pace).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import resource
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtests.bench import triton_counters
from loadtests.bench.batching import Send, load_session
from loadtests.bench.gpu.common import nvidia_smi


@dataclass
class Level:
    endpoint: str
    concurrency: int
    seconds: float
    requests: int  # answered inside the window
    errors: int
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    triton: dict[str, dict[str, float | None]] = field(default_factory=dict)  # per model, the window's
    # per model and batch size, the window's executions and their mean compute time (ms)
    executions: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    gpu_utilisation: dict[str, float] | None = None  # mean and max percent, where nvidia-smi answers
    facade_cpu: dict[str, float] | None = None  # the facade's CPU seconds in the window, per request, in cores
    client_cores: float = 0.0  # CPU the load generator itself spent in the window (it must stay well below 1)


def process_tree_cpu_s(root: int, marker: bytes) -> float | None:
    """CPU seconds (user and system) spent so far by the processes under ``root`` whose command line
    holds ``marker``, their children included (a facade's workers); None where none is found."""
    parents: dict[int, int] = {}
    spent: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue  # ended meanwhile
        fields = stat.rsplit(b")", 1)[1].split()  # after "pid (name)": state, ppid, ... utime is 14th
        parents[int(entry)] = int(fields[1])
        spent[int(entry)] = (int(fields[11]) + int(fields[12])) / tick

    def under(pid: int, ancestor: int) -> bool:
        while pid in parents and pid != ancestor:
            pid = parents[pid]
        return pid == ancestor

    def has_marker(pid: int) -> bool:
        try:
            return marker in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    marked = [pid for pid in spent if under(pid, root) and has_marker(pid)]
    if not marked:
        return None
    return sum(seconds for pid, seconds in spent.items() if any(under(pid, top) for top in marked))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# How the facade's process is told apart under ``milo-voice serve`` (cli.py starts ``-m api_facade``).
FACADE_MARKER = b"-m\0api_facade"


class GpuSampler:
    """nvidia-smi's utilisation of GPU 0 every ``interval_s`` in a thread, while in the block."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)

    def _run(self) -> None:
        if self.interval_s <= 0:
            return  # not sampled: nvidia-smi starts a process that queries the driver each time
        while not self._stop.wait(self.interval_s):
            out = nvidia_smi("gpu=utilization.gpu", "--id=0", timeout_s=5)
            if out is None:
                return  # no driver here (a CPU dry run): nothing to sample
            if out.isdigit():
                self.samples.append(float(out))

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float] | None:
        if not self.samples:
            return None
        return {"mean": round(statistics.mean(self.samples), 1), "max": max(self.samples), "n": len(self.samples)}


async def run_level(
    base: str,
    endpoint: str,
    concurrency: int,
    send: Send,
    seconds: float = 20.0,
    warmup_s: float = 5.0,
    metrics_url: str | None = None,
    stack_pid: int | None = None,
    gpu_sample_s: float = 0.5,
    triton_http: str | None = None,
) -> Level:
    """``stack_pid``: the process the facade runs under, whose CPU time the level reports;
    ``gpu_sample_s``: how often the GPU's utilisation is read (0: never); ``triton_http``: Triton's
    HTTP host:port, whose statistics give the executions per batch size."""
    latencies: list[float] = []
    answered = errors = 0
    window: dict[str, float] = {}

    async def client_loop(client: aiohttp.ClientSession, number: int) -> None:
        nonlocal answered, errors
        n = number
        while True:
            started = time.perf_counter()
            if "end" in window and started >= window["end"]:
                return
            answer = await send(client, base, n)
            done = time.perf_counter()
            n += concurrency
            if "start" not in window or started < window["start"] or done > window["end"]:
                continue  # warm-up, or answered after the window: not counted
            latencies.append((done - started) * 1000)
            answered += answer.status == 200
            errors += answer.status != 200

    before: triton_counters.Counters = {}
    batches_before: triton_counters.BatchStats = {}
    async with load_session(concurrency) as client:
        clients = [asyncio.create_task(client_loop(client, i)) for i in range(concurrency)]
        await asyncio.sleep(warmup_s)
        if metrics_url:
            before = await asyncio.to_thread(triton_counters.read, metrics_url)
        if triton_http:
            batches_before = await asyncio.to_thread(triton_counters.read_batch_stats, triton_http)
        cpu_before = process_tree_cpu_s(stack_pid, FACADE_MARKER) if stack_pid else None
        client_before = _own_cpu_s()
        window["start"] = time.perf_counter()
        window["end"] = window["start"] + seconds
        with GpuSampler(gpu_sample_s) as gpu:
            await asyncio.sleep(seconds)
            cpu_after = process_tree_cpu_s(stack_pid, FACADE_MARKER) if stack_pid else None
            client_cores = (_own_cpu_s() - client_before) / seconds
            after = await asyncio.to_thread(triton_counters.read, metrics_url) if metrics_url else {}
            batches_after = (
                await asyncio.to_thread(triton_counters.read_batch_stats, triton_http) if triton_http else {}
            )
        await asyncio.gather(*clients)  # those in flight finish; none is counted after the window
    facade_cpu = None
    if cpu_before is not None and cpu_after is not None:
        spent = cpu_after - cpu_before
        facade_cpu = {"seconds": round(spent, 2), "ms_per_request": round(1000 * spent / max(answered, 1), 2),
                      "cores": round(spent / seconds, 2)}  # fmt: skip
    return Level(
        endpoint, concurrency, seconds, answered, errors, round(answered / seconds, 2),
        round(statistics.median(latencies), 1) if latencies else 0.0,
        round(percentile(latencies, 0.95), 1) if latencies else 0.0,
        round(percentile(latencies, 0.99), 1) if latencies else 0.0,
        triton_counters.stretch(before, after) if metrics_url else {},
        triton_counters.by_batch(batches_before, batches_after), gpu.summary(), facade_cpu, round(client_cores, 2),
    )  # fmt: skip


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _inprocess_results(work: Path) -> dict[str, Any]:
    """The ``inprocess`` phase's results in ``work``; none where it has not run."""
    path = work / "results" / "inprocess.json"
    return json.loads(path.read_text()) if path.exists() else {}


def inprocess_rates(work: Path, endpoint: str) -> dict[int, float]:
    """The role's own rate by batch size, from the ``inprocess`` phase's results (requests or clips/s)."""
    results = _inprocess_results(work)
    if endpoint == "stt":
        turbo = results.get("stt", {}).get("large-v3-turbo", {})
        return {
            int(key.removeprefix("batch")): float(row["role_torch_clips_s"])
            for key, row in turbo.items()
            if key.startswith("batch") and "role_torch_clips_s" in row
        }
    batches = results.get(endpoint, {}).get("batches", {})
    return {int(batch): float(row["requests_s"]) for batch, row in batches.items() if "requests_s" in row}


def inprocess_step_rates(work: Path, endpoint: str) -> dict[int, float]:
    """The role's own step-level loop by requests in flight (one step between two looks at what
    ended, as the served handler does; its search as the registry runs it, not the rows measured
    with the rules op by op beside it), from the ``inprocess`` phase's results (requests/s)."""
    stepwise = _inprocess_results(work).get(endpoint, {}).get("stepwise", {})
    return {
        int(row["clients"]): float(row["requests_s"])
        for row in stepwise.values()
        if isinstance(row, dict) and row.get("steps") == 1 and "requests_s" in row and not row.get("op_by_op")
    }


def inprocess_ms(reference: dict[int, float], batch: int) -> float:
    """The in-process time of a batch of ``batch`` from the rates measured at some batch sizes
    (requests/s by batch), linear between the two measured sizes around it, beyond the largest in
    proportion to its size."""
    sizes = sorted(reference)
    times = {size: 1000 * size / reference[size] for size in sizes}
    if batch <= sizes[0]:
        return times[sizes[0]]
    for low, high in itertools.pairwise(sizes):
        if low <= batch <= high:
            return times[low] + (times[high] - times[low]) * (batch - low) / (high - low)
    return times[sizes[-1]] * batch / sizes[-1]


def executions_over_inprocess(
    executions: dict[int, dict[str, float]], reference: dict[int, float], seconds: float
) -> dict[str, float]:
    """The served executions' compute time over what the same batches take in process, and how
    busy they kept the model (compute seconds per second: above 1 with several instances)."""
    served = sum(row["executions"] * row["ms"] for row in executions.values())
    alone = sum(row["executions"] * inprocess_ms(reference, size) for size, row in executions.items())
    count = sum(row["executions"] for row in executions.values())
    return {
        "executions": count,
        "served_ms_per_execution": round(served / max(count, 1), 1),
        "inprocess_ms_per_execution": round(alone / max(count, 1), 1),
        "served_over_inprocess_time": round(served / alone, 2) if alone else 0.0,
        "busy": round(served / 1000 / seconds, 2),
    }
