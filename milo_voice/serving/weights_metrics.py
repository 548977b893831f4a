"""``milo_model_weights_info{model,revision}``: 1 for the weights each model of a host loaded, by
their content hash (``milo_voice.weights.identity``), so a dashboard shows which weights run where.

The PyTriton host sets it in its ``prometheus_client`` registry (served by ``MetricsRelay``); the
stock server's Python backend through Triton's custom-metrics API.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Gauge

from milo_voice.registry import ModelSpec, models_dir
from milo_voice.weights import identity

NAME = "milo_model_weights_info"
HELP = "1 for the weights each model loaded (a content hash of their files)"
_GAUGE = Gauge(NAME, HELP, ["model", "revision"])


def loaded_revision(spec: ModelSpec, profile: str) -> str | None:
    """The revision of ``spec``'s weights folder, or None where it has none (a remote chat backend)."""
    folder = spec.path(profile, models_dir())
    return identity.read(folder).revision if (folder / ".complete").is_file() else None


def publish(spec: ModelSpec, profile: str) -> None:
    if (revision := loaded_revision(spec, profile)) is not None:
        _GAUGE.labels(spec.name, revision).set(1)


class TritonWeightsMetric:
    """The same series from a Python backend stub; keep the object as long as the model is loaded
    (a Triton metric family must outlive its metrics)."""

    def __init__(self, pb_utils: Any, spec: ModelSpec, profile: str) -> None:
        self._family = pb_utils.MetricFamily(NAME, HELP, pb_utils.MetricFamily.GAUGE)
        self._metric = None
        if (revision := loaded_revision(spec, profile)) is not None:
            self._metric = self._family.Metric(labels={"model": spec.name, "revision": revision})
            self._metric.set(1)
