"""Where a batched model's executions go, on the model server's metrics port, for both servers:

- ``milo_batch_executions_total{model}``: batches the model's process computed;
- ``milo_batch_seconds_total{model}``: the seconds it spent on them, from a batch's tensors
  handed over to its answers built (in the stock server's Python backend: reading the
  requests' tensors, the role's batch call, building the responses);
- ``milo_batch_role_seconds_total{model}``: of those, the seconds in the role's batch call.

Over a stretch, each over the executions is what a batch cost the process and the role. Set
beside Triton's own time of an execution (its statistics API, by batch size, which also holds
moving the tensors between the server and the backend's process) and the same batch in
process, they say which part of a served execution the role does not account for, and so
whether the GPU waits on the process's work around the role. (Triton's Prometheus compute time,
``nv_inference_compute_infer_duration_us``, is counted per request, each request the time of
the batch it rode in: where batch sizes vary it weighs the larger batches more.)

The PyTriton host keeps them in ``prometheus_client`` (served by ``pytriton_app.metrics``); the
stock server's Python backend registers them with Triton's custom-metrics API.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from prometheus_client import Counter

from milo_voice.serving.tensor_io import BatchHandler

EXECUTIONS = ("milo_batch_executions", "Batches a batched model's process computed")
SECONDS = ("milo_batch_seconds", "Seconds a batched model's process spent on its batches, tensors in to answers out")
ROLE_SECONDS = ("milo_batch_role_seconds", "Of a batched model's seconds, those in the role's batch call")

_EXECUTIONS = Counter(*EXECUTIONS, ["model"])
_SECONDS = Counter(*SECONDS, ["model"])
_ROLE_SECONDS = Counter(*ROLE_SECONDS, ["model"])

log = logging.getLogger(__name__)

BatchReport = Callable[[float, float], None]  # (a batch's seconds, the role's seconds in it)


class BatchClock:
    """Times one handler's batches: ``timing()`` spans a batch as the server hands it over and
    yields the handler to call, whose role calls are timed inside it; ``report`` gets both."""

    def __init__(self, handler: BatchHandler, report: BatchReport | None = None) -> None:
        self._report = report
        self._role_s = 0.0
        self.handler = replace(handler, compute=self._timed(handler.compute)) if report else handler

    def _timed(self, compute: Callable[[list[Any]], Sequence[Any]]) -> Callable[[list[Any]], Sequence[Any]]:
        def timed(requests: list[Any]) -> Sequence[Any]:
            started = time.perf_counter()
            try:
                return compute(requests)
            finally:  # a batch that fails is computed again by halves: each call counts
                self._role_s += time.perf_counter() - started

        return timed

    @contextmanager
    def timing(self) -> Iterator[BatchHandler]:
        self._role_s = 0.0
        started = time.perf_counter()
        try:
            yield self.handler
        finally:
            if self._report is not None:
                try:
                    self._report(time.perf_counter() - started, self._role_s)
                except Exception:  # the batch is answered whatever befalls its metrics
                    log.exception("the batch's times were not recorded")


def prometheus_batch_report(model: str) -> BatchReport:
    """Into this process's ``prometheus_client`` registry (the PyTriton host)."""
    executions, seconds, role_seconds = (c.labels(model) for c in (_EXECUTIONS, _SECONDS, _ROLE_SECONDS))

    def report(batch_s: float, role_s: float) -> None:
        executions.inc()
        seconds.inc(batch_s)
        role_seconds.inc(role_s)

    return report


class TritonBatchMetrics:
    """Through Triton's custom-metrics API (``pb_utils.MetricFamily``), in a Python backend stub.
    An increment is a round trip to the server: three a batch, against a batch's milliseconds."""

    def __init__(self, pb_utils: Any, model: str) -> None:
        family = pb_utils.MetricFamily
        # A family must outlive its metrics: both are kept here. Triton's counters carry no
        # "_total" suffix of their own: named as Prometheus reads them.
        series = (EXECUTIONS, SECONDS, ROLE_SECONDS)
        self._families = [family(f"{name}_total", text, family.COUNTER) for name, text in series]
        self._executions, self._seconds, self._role_seconds = (f.Metric({"model": model}) for f in self._families)

    def report(self, batch_s: float, role_s: float) -> None:
        self._executions.increment(1)
        self._seconds.increment(batch_s)
        self._role_seconds.increment(role_s)
