"""The chat engine's metrics on the model server's metrics port, for both servers.

The same five series, labelled by Triton model, whichever server runs the engine:

- ``milo_chat_engine_slots``: conversations the engine decodes at once;
- ``milo_chat_engine_slots_busy``: of those, the ones in use;
- ``milo_chat_engine_generated_tokens_total``: tokens sampled (its rate is tokens per second);
- ``milo_chat_engine_time_to_first_token_seconds``: submitted to first token, queue included;
- ``milo_chat_engine_queue_seconds``: submitted to holding a slot.

The PyTriton host keeps them in ``prometheus_client`` and serves them on Triton's metrics
port together with Triton's own (``pytriton_app.metrics``); the stock server's Python
backend registers them with Triton's custom-metrics API, which serves them on that port.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from milo_voice.roles.generation import EngineObserver

# Around the audit's chat target (2.3 s for a whole reply): a first token should come far sooner.
SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.3, 5.0, 10.0, 30.0, 120.0)
SLOTS = ("milo_chat_engine_slots", "Conversations the chat engine decodes at once")
SLOTS_BUSY = ("milo_chat_engine_slots_busy", "Chat engine slots holding a conversation")
TOKENS = ("milo_chat_engine_generated_tokens", "Tokens the chat engine sampled")
FIRST_TOKEN = ("milo_chat_engine_time_to_first_token_seconds", "Chat request submitted to its first token")
QUEUE = ("milo_chat_engine_queue_seconds", "Chat request submitted to holding a slot")

_SLOTS = Gauge(*SLOTS, ["model"])
_SLOTS_BUSY = Gauge(*SLOTS_BUSY, ["model"])
_TOKENS = Counter(*TOKENS, ["model"])
_FIRST_TOKEN = Histogram(*FIRST_TOKEN, ["model"], buckets=SECONDS_BUCKETS)
_QUEUE = Histogram(*QUEUE, ["model"], buckets=SECONDS_BUCKETS)


class PrometheusChatMetrics(EngineObserver):
    """In this process's ``prometheus_client`` registry (the PyTriton host)."""

    def __init__(self, model: str) -> None:
        self._slots = _SLOTS.labels(model)
        self._busy = _SLOTS_BUSY.labels(model)
        self._tokens = _TOKENS.labels(model)
        self._first_token = _FIRST_TOKEN.labels(model)
        self._queue = _QUEUE.labels(model)

    def capacity(self, change: int) -> None:
        self._slots.inc(change)  # several engines may serve one model

    def slots_busy(self, change: int) -> None:
        self._busy.inc(change)

    def tokens(self, count: int) -> None:
        self._tokens.inc(count)

    def first_token(self, seconds: float) -> None:
        self._first_token.observe(seconds)

    def admitted(self, queue_seconds: float) -> None:
        self._queue.observe(queue_seconds)


class TritonChatMetrics(EngineObserver):
    """Through Triton's custom-metrics API (``pb_utils.MetricFamily``), in a Python backend stub."""

    def __init__(self, pb_utils: Any, model: str) -> None:
        family = pb_utils.MetricFamily
        # A family must outlive its metrics: both are kept here.
        self._families = {
            "slots": family(SLOTS[0], SLOTS[1], family.GAUGE),
            "busy": family(SLOTS_BUSY[0], SLOTS_BUSY[1], family.GAUGE),
            # Triton's counters carry no "_total" suffix of their own: named as Prometheus reads them.
            "tokens": family(f"{TOKENS[0]}_total", TOKENS[1], family.COUNTER),
            "first_token": family(FIRST_TOKEN[0], FIRST_TOKEN[1], family.HISTOGRAM),
            "queue": family(QUEUE[0], QUEUE[1], family.HISTOGRAM),
        }
        labels, buckets = {"model": model}, list(SECONDS_BUCKETS)
        self._slots = self._families["slots"].Metric(labels)
        self._busy = self._families["busy"].Metric(labels)
        self._tokens = self._families["tokens"].Metric(labels)
        self._first_token = self._families["first_token"].Metric(labels, buckets)
        self._queue = self._families["queue"].Metric(labels, buckets)

    def capacity(self, change: int) -> None:
        self._slots.increment(change)

    def slots_busy(self, change: int) -> None:
        self._busy.increment(change)

    def tokens(self, count: int) -> None:
        self._tokens.increment(count)

    def first_token(self, seconds: float) -> None:
        self._first_token.observe(seconds)

    def admitted(self, queue_seconds: float) -> None:
        self._queue.observe(queue_seconds)
