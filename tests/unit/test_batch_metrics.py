"""A batched model's own timing of its batches (``milo_batch_*``): the whole batch as the server
hands it over, the role's call inside it, on both servers' metrics; and as the benchmark reads it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import REGISTRY, generate_latest

from contract import codec, tensors
from contract.records import InputError, TranslateRequest
from loadtests.bench import triton_counters
from loadtests.bench.gpu.served import batch_line
from milo_voice.serving.batch_metrics import BatchClock, TritonBatchMetrics, prometheus_batch_report
from milo_voice.serving.tensor_io import BatchHandler

ROLE_S = 0.02  # what the role's call takes here


def refusing_role(requests: Sequence[Any]) -> list[InputError]:
    """A role's batch call that takes ``ROLE_S`` and refuses every request (no model needed)."""
    time.sleep(ROLE_S)
    return [InputError(f"refused: {r.text}") for r in requests]


def request(text: str) -> codec.Arrays:
    return codec.pack_request(tensors.TRANSLATE, TranslateRequest(text, "mg", "fr"))


def test_a_batch_is_timed_whole_and_in_its_role_call() -> None:
    reports: list[tuple[float, float]] = []
    clock = BatchClock(BatchHandler(tensors.TRANSLATE, refusing_role), lambda b, r: reports.append((b, r)))
    with clock.timing() as handler:
        time.sleep(0.01)  # the server's side of the batch: its tensors read
        outputs = handler([request("Salama."), request("Veloma.")])
    assert [o["error"][0][0] for o in outputs] == [b"refused: Salama.", b"refused: Veloma."]
    [(batch_s, role_s)] = reports
    assert role_s >= ROLE_S and batch_s >= role_s + 0.01


def test_a_batch_computed_again_by_halves_counts_every_call_of_the_role() -> None:
    calls: list[int] = []

    def fails_with_company(requests: Sequence[Any]) -> list[InputError]:
        calls.append(len(requests))
        if len(requests) > 1:
            time.sleep(ROLE_S)
            raise RuntimeError("out of memory")
        return refusing_role(requests)

    reports: list[tuple[float, float]] = []
    clock = BatchClock(BatchHandler(tensors.TRANSLATE, fails_with_company), lambda b, r: reports.append((b, r)))
    with clock.timing() as handler:
        handler([request(str(i)) for i in range(4)])
    assert calls == [4, 2, 1, 1, 2, 1, 1]
    [(batch_s, role_s)] = reports
    assert len(calls) * ROLE_S <= role_s <= batch_s


def test_a_batch_is_answered_when_its_times_cannot_be_recorded() -> None:
    def broken_metrics(batch_s: float, role_s: float) -> None:
        raise RuntimeError("the server's metrics API is gone")

    clock = BatchClock(BatchHandler(tensors.TRANSLATE, refusing_role), broken_metrics)

    def served() -> list[codec.Arrays]:
        with clock.timing() as handler:
            return handler([request("Salama.")])

    assert served()[0]["error"][0][0] == b"refused: Salama."


def test_without_a_report_the_handler_is_the_one_given() -> None:
    handler = BatchHandler(tensors.TRANSLATE, refusing_role)
    with BatchClock(handler).timing() as timed:
        assert timed is handler


def test_the_pytriton_host_counts_batches_where_the_benchmark_reads_them() -> None:
    before = triton_counters.parse(generate_latest(REGISTRY).decode()).get("translate-clock", {})
    report = prometheus_batch_report("translate-clock")
    report(0.030, 0.020)
    report(0.050, 0.040)
    own = triton_counters.parse(generate_latest(REGISTRY).decode())["translate-clock"]
    assert own["batch_executions"] - before.get("batch_executions", 0) == 2
    assert round(own["batch_seconds"] - before.get("batch_seconds", 0), 6) == 0.08
    assert round(own["role_seconds"] - before.get("role_seconds", 0), 6) == 0.06


def test_the_benchmark_reads_a_batch_s_own_times_per_execution() -> None:
    before = {"stt": {"requests": 0.0, "executions": 0.0, "batch_executions": 0.0}}
    after = {
        "stt": {
            "requests": 64.0, "executions": 2.0, "compute_us": 64 * 304_000.0,
            "batch_executions": 2.0, "batch_seconds": 0.58, "role_seconds": 0.556,
        }
    }  # fmt: skip
    stretch = triton_counters.stretch(before, after)
    row = stretch["stt"]
    assert (row["compute_ms"], row["batch_ms"], row["role_ms"]) == (304.0, 290.0, 278.0)
    # The served phase's line for the level says them.
    assert batch_line(stretch) == " | stt's process: 290.0 ms a batch, 278.0 ms of it in the role"


def test_the_stock_server_counts_them_through_triton_s_metrics_api() -> None:
    counted: dict[str, float] = {}

    class Family:
        COUNTER = "counter"

        def __init__(self, name: str, description: str, kind: str) -> None:
            assert kind == "counter" and name.endswith("_total")
            self.name = name

        def Metric(self, labels: dict[str, str]) -> Any:
            family = self

            class Metric:
                def increment(self, value: float) -> None:
                    key = f'{family.name}{{model="{labels["model"]}"}}'
                    counted[key] = counted.get(key, 0.0) + value

            return Metric()

    metrics = TritonBatchMetrics(type("pb_utils", (), {"MetricFamily": Family}), "stt")
    metrics.report(0.3, 0.25)
    metrics.report(0.2, 0.15)
    page = "\n".join(f"{key} {value}" for key, value in counted.items())
    own = triton_counters.parse(page)["stt"]
    assert own == {"batch_executions": 2.0, "batch_seconds": 0.5, "role_seconds": 0.4}
