"""Step-level batching's search, on the stock server's metrics port: how many steps the role's
thread took, how many sentences they decoded, and how long they took. Over a stretch, sentences
over steps is how full a step was, and seconds over steps what a step cost while serving, to set
against the same search in process.

- ``milo_translate_search_steps_total``: decoding steps;
- ``milo_translate_search_sentences_total``: sentences decoded, summed over the steps;
- ``milo_translate_search_step_seconds_total``: seconds the steps took, each from the collection
  of the step before (or its own launch, the first after an idle spell) to its own: with a step
  always queued behind the one decoding, the time the GPU gave each step, its idle time included.

A Triton metric's update is a round trip to the server: the counts are kept here and handed over
at most every ``FLUSH_S``, not at every step.
"""

from __future__ import annotations

import time
from typing import Any

STEPS = ("milo_translate_search_steps_total", "Decoding steps of the translation search (step-level batching)")
SENTENCES = ("milo_translate_search_sentences_total", "Sentences the translation search decoded, summed over its steps")
SECONDS = ("milo_translate_search_step_seconds_total", "Seconds the translation search's steps took")
FLUSH_S = 0.5


class TritonSearchMetrics:
    """The search's steps through Triton's custom-metrics API (``pb_utils.MetricFamily``)."""

    def __init__(self, pb_utils: Any, model: str) -> None:
        family = pb_utils.MetricFamily
        # A family must outlive its metrics: both are kept here.
        self._families = [family(name, text, family.COUNTER) for name, text in (STEPS, SENTENCES, SECONDS)]
        self._metrics = [f.Metric({"model": model}) for f in self._families]
        self._pending = [0.0, 0.0, 0.0]
        self._flushed = time.monotonic()

    def step(self, sentences: int, seconds: float) -> None:
        """One step of ``sentences`` sentences that took ``seconds``."""
        self._pending[0] += 1
        self._pending[1] += sentences
        self._pending[2] += seconds
        if time.monotonic() - self._flushed >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        for metric, value in zip(self._metrics, self._pending, strict=True):
            if value:
                metric.increment(value)
        self._pending = [0.0, 0.0, 0.0]
        self._flushed = time.monotonic()
