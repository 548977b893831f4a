"""``milo_translate_step_kernels_info{model,attention,top}``: 1 for the ways a translation model's
torch engine runs its search steps (its attention, and how it takes each row's best logits), as
chosen when it loaded (``milo_voice/roles/nllb/tuning.py``). "auto" picks them by timing on the
GPU at hand, so what runs is known only to the process that loaded it: this series says it to a
dashboard and to the benchmark. An instance that loads no torch engine sets none.

The PyTriton host sets it in its ``prometheus_client`` registry; the stock server's Python backend
through Triton's custom-metrics API.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Gauge

from milo_voice.roles.nllb.kernels import ChosenKernels

NAME = "milo_translate_step_kernels_info"
HELP = "1 for the ways a translation model's search steps run (attention, best logits), chosen at load"
_GAUGE = Gauge(NAME, HELP, ["model", "attention", "top"])


def publish(model: str, kernels: ChosenKernels | None) -> None:
    if kernels is not None:
        _GAUGE.labels(model, kernels.attention, kernels.top).set(1)


class TritonKernelsMetric:
    """The same series from a Python backend stub; keep the object as long as the model is loaded
    (a Triton metric family must outlive its metrics)."""

    def __init__(self, pb_utils: Any, model: str, kernels: ChosenKernels | None) -> None:
        self._family = pb_utils.MetricFamily(NAME, HELP, pb_utils.MetricFamily.GAUGE)
        self._metric = None
        if kernels is not None:
            labels = {"model": model, "attention": kernels.attention, "top": kernels.top}
            self._metric = self._family.Metric(labels=labels)
            self._metric.set(1)
