"""The served benchmark's level: a fixed window after a warm-up, what it counts and how it compares."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from loadtests.bench.batching import Answer
from loadtests.bench.gpu.common import REPO, batch_row, timed_calls
from loadtests.bench.gpu.levels import (
    Level,
    executions_over_inprocess,
    inprocess_ms,
    inprocess_step_rates,
    percentile,
    process_tree_cpu_s,
    run_level,
)
from loadtests.bench.gpu.served import endpoint_levels, served_over_inprocess, variant_levels


def test_a_level_counts_only_what_is_answered_inside_its_window() -> None:
    sent: list[float] = []

    async def send(client: aiohttp.ClientSession, base: str, n: int) -> Answer:
        sent.append(time.perf_counter())
        await asyncio.sleep(0.05)  # each client: about 20 answers a second
        return Answer(200 if n % 10 else 503, b"")

    started = time.perf_counter()
    level = asyncio.run(run_level("http://unused", "stt", 4, send, seconds=1.0, warmup_s=0.5))
    elapsed = time.perf_counter() - started
    assert 1.5 <= elapsed < 1.8  # warm-up, window, and the requests in flight at its end
    assert 55 <= level.requests + level.errors <= 80  # 4 clients x 20 a second x 1 s, not the warm-up
    assert level.errors > 0 and abs(level.throughput_rps - level.requests) < 1e-9
    assert 50 <= level.p50_ms <= level.p95_ms <= level.p99_ms < 150
    assert len(sent) > level.requests + level.errors  # the warm-up's requests were sent, not counted
    assert level.triton == {} and level.gpu_utilisation is None  # no Triton here, no GPU
    assert level.facade_cpu is None  # no facade named
    assert 0 <= level.client_cores < 0.5  # the generator itself: sleeping clients cost next to nothing


def test_the_facade_cpu_is_counted_over_its_process_and_its_children() -> None:
    """What the level reports as the facade's: the processes under the stack whose command line
    holds the marker, and their own children (a facade's workers)."""
    burn = "import time; end = time.process_time() + 0.6\nwhile time.process_time() < end: pass"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}], check=True)"
    marker = b"milo-test-marker"
    child = subprocess.Popen([sys.executable, "-c", parent + "  # " + marker.decode()])
    try:
        time.sleep(0.4)
        during = process_tree_cpu_s(os.getpid(), marker)
        child.wait(timeout=30)
    finally:
        child.kill()
    assert during is not None and during >= 0.1  # the worker's CPU, counted while it runs
    assert process_tree_cpu_s(os.getpid(), b"no process has this marker") is None


def test_percentiles_of_a_short_list() -> None:
    assert percentile([5.0, 1.0, 3.0], 0.5) == 3.0
    assert percentile([float(v) for v in range(1, 101)], 0.99) == 99.0


def test_served_throughput_is_set_beside_the_roles_rate_in_process() -> None:
    level = Level("stt", 64, 20.0, 2000, 0, 100.0, 500.0, 700.0, 800.0, {"stt": {"mean_batch": 14.2}})
    ratios = served_over_inprocess(level, {1: 27.1, 8: 83.9, 32: 105.5})
    assert ratios["inprocess_best"] == {"batch": 32, "rate": 105.5}
    assert ratios["served_over_best"] == round(100.0 / 105.5, 3)
    assert ratios["inprocess_at_formed_batch"] == {"batch": 8, "rate": 83.9}  # batches of 14: below 32
    assert served_over_inprocess(level, {}) == {}
    assert "execution_times" not in ratios  # no statistics of executions by batch size: nothing to set beside


def test_served_executions_are_set_beside_the_same_batches_in_process() -> None:
    reference = {1: 25.0, 16: 200.0, 32: 400.0}  # 40 ms, 80 ms, 80 ms a batch
    assert inprocess_ms(reference, 1) == 40.0
    assert inprocess_ms(reference, 8) == 40.0 + 40.0 * 7 / 15  # between the sizes measured around it
    assert inprocess_ms(reference, 64) == 160.0  # beyond the largest: in proportion
    executions = {1: {"executions": 10, "ms": 40.0}, 32: {"executions": 10, "ms": 160.0}}
    times = executions_over_inprocess(executions, reference, seconds=2.0)
    assert times == {
        "executions": 20,
        "served_ms_per_execution": 100.0,
        "inprocess_ms_per_execution": 60.0,
        "served_over_inprocess_time": round(2000 / 1200, 2),
        "busy": 1.0,
    }
    level = Level("translate", 64, 2.0, 330, 0, 165.0, 90.0, 99.0, 99.0, {"translate": {"requests": 330.0}},
                  {"translate": executions})  # fmt: skip
    assert served_over_inprocess(level, reference)["execution_times"] == times


def test_a_step_level_search_is_also_set_beside_the_roles_own_step_level_loop() -> None:
    searched = {"translate": {"requests": 8297.0, "mean_batch": 2.69, "search_steps": 3685.0}}
    level = Level("translate", 64, 25.0, 8229, 0, 329.16, 188.3, 234.1, 278.4, searched)
    ratios = served_over_inprocess(level, {32: 354.9, 64: 404.2}, {64: 512.0, 128: 531.2})
    assert ratios["served_over_best"] == round(329.16 / 404.2, 3)
    assert ratios["inprocess_steps"] == {"clients": 64, "rate": 512.0}
    assert ratios["served_over_steps"] == round(329.16 / 512.0, 3)
    # The dynamic batcher's level (no search) and a level of clients the loop never ran: no such ratio.
    batched = Level("translate", 64, 25.0, 5189, 0, 207.56, 296.7, 378.6, 443.4, {"translate": {"requests": 5189.0}})
    assert "served_over_steps" not in served_over_inprocess(batched, {64: 404.2}, {64: 512.0})
    assert "served_over_steps" not in served_over_inprocess(level, {64: 404.2}, {128: 531.2})


def test_the_step_level_reference_is_read_from_a_leases_in_process_results(tmp_path: Path) -> None:
    lease = Path(__file__).parents[2] / "docs/benchmarks/gpu/h200-2026-12-02e/1-inprocess/inprocess.json"
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "inprocess.json").write_text(lease.read_text())
    # One step between two looks, as the served handler: 64x1 and 128x1, not 64x4 nor the handler's row.
    assert inprocess_step_rates(tmp_path, "translate") == {64: 512.0, 128: 531.2}
    assert inprocess_step_rates(tmp_path, "tts") == {}
    assert inprocess_step_rates(tmp_path / "absent", "translate") == {}
    # A lease that also ran the loop with the search's rules op by op: the row as the registry runs it.
    results = json.loads(lease.read_text())
    results["translate"]["stepwise"]["64x1, op by op"] = {
        "clients": 64,
        "steps": 1,
        "op_by_op": True,
        "requests_s": 1.0,
    }
    (tmp_path / "results" / "inprocess.json").write_text(json.dumps(results))
    assert inprocess_step_rates(tmp_path, "translate") == {64: 512.0, 128: 531.2}


def test_a_variant_says_which_endpoints_it_does_not_measure_and_why() -> None:
    """A one-role variant measures that role's endpoints only, and a dropped model's none; each
    endpoint left out is named with its reason (a lease's call once lost two levels unseen)."""
    asked = endpoint_levels("stt:64,stt-short:1,tts:64,translate:64,chat:16", [1])
    loaded = ["stt", "tts", "translate"]  # --drop chat
    kept, skipped = variant_levels("stt-x2+stt-b32", asked, loaded)
    assert kept == [("stt", [64]), ("stt-short", [1])]
    assert skipped == [
        "tts (the variant changes stt only)",
        "translate (the variant changes stt only)",
        "chat (the variant changes stt only)",
    ]
    kept, skipped = variant_levels("configured", asked, loaded)
    assert [endpoint for endpoint, _ in kept] == ["stt", "stt-short", "tts", "translate"]
    assert skipped == ["chat (not loaded)"]
    # Overlays of two roles measure both; one named for no role (``tuned``) measures every role.
    kept, skipped = variant_levels("stt-b32+tts-x8", asked, loaded)
    assert [endpoint for endpoint, _ in kept] == ["stt", "stt-short", "tts"]
    assert skipped[0] == "translate (the variant changes stt, tts only)"
    kept, _ = variant_levels("tuned", asked, loaded)
    assert [endpoint for endpoint, _ in kept] == ["stt", "stt-short", "tts", "translate"]


def test_a_batch_size_is_called_until_both_its_calls_and_its_seconds_are_reached() -> None:
    calls: list[int] = []
    assert len(timed_calls(lambda: calls.append(1), repeats=5, seconds=0.0, warmup=2)) == 5
    assert len(calls) == 7  # the warm-up's calls are made and not kept
    samples = timed_calls(lambda: time.sleep(0.01), repeats=2, seconds=0.1, warmup=0)
    # More calls than asked, until the seconds are spent, and not one more.
    assert len(samples) > 2 and sum(samples) >= 0.1 > sum(samples[:-1])
    row = batch_row(4, [0.1, 0.3, 0.2])
    assert row == {"ms": 200.0, "requests_s": 20.0, "ms_min": 100.0, "ms_max": 300.0, "calls": 3}


def test_the_locust_phase_saves_its_figures_before_the_stack_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call cut short while the stack stops keeps the mix's figures; the stop's seconds come after."""
    from loadtests import runner
    from loadtests.bench.gpu import served

    stats = REPO / "docs/benchmarks/gpu/h200-2026-12-02g/2-locust/locust_stats-configured.csv"
    result = tmp_path / "results" / "locust-configured-tritonserver.json"
    seen_while_stopping: dict[str, Any] = {}

    @contextlib.contextmanager
    def stack_for(args: argparse.Namespace, variant: str, log: Path) -> Iterator[Any]:
        yield SimpleNamespace(facade="http://facade", metrics="metrics"), [], 12.5
        seen_while_stopping.update(json.loads(result.read_text()))
        time.sleep(0.2)

    def run_locust(args: argparse.Namespace, url: str, out: Path) -> int:
        shutil.copy(stats, out / "locust_stats.csv")
        return 0

    monkeypatch.setattr(served, "stack_for", stack_for)
    monkeypatch.setattr(served, "gpu_memory", dict)
    monkeypatch.setattr(served, "host_metrics", lambda url: ({}, {}))
    monkeypatch.setattr(runner, "run_locust", run_locust)
    args = argparse.Namespace(
        variants="configured",
        work=tmp_path,
        users=16,
        duration="60s",
        mps=False,
        facade_workers=1,
        server="tritonserver",
    )
    served.phase_locust(args)

    assert seen_while_stopping["start_s"] == 12.5 and "stop_s" not in seen_while_stopping
    tts = next(v for v in seen_while_stopping["verdicts"] if v["endpoint"] == "tts")
    assert tts["stats"]["p50_ms"] == 51 and tts["passed"]
    final = json.loads(result.read_text())
    assert final["stop_s"] >= 0.2 and final["verdicts"] == seen_while_stopping["verdicts"]
