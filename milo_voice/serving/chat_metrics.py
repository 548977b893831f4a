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


class _ChatMetrics(EngineObserver):
    """The engine's events onto five metrics; ``add`` is how this metrics library adds to a gauge
    or a counter (prometheus_client's ``inc``, Triton's ``increment``)."""

    def __init__(self, slots: Any, busy: Any, tokens: Any, first_token: Any, queue: Any, add: str) -> None:
        self._slots_add, self._busy_add, self._tokens_add = (getattr(m, add) for m in (slots, busy, tokens))
        self._first_token, self._queue = first_token, queue

    def capacity(self, change: int) -> None:
        self._slots_add(change)  # several engines may serve one model

    def slots_busy(self, change: int) -> None:
        self._busy_add(change)

    def tokens(self, count: int) -> None:
        self._tokens_add(count)

    def first_token(self, seconds: float) -> None:
        self._first_token.observe(seconds)

    def admitted(self, queue_seconds: float) -> None:
        self._queue.observe(queue_seconds)


class PrometheusChatMetrics(_ChatMetrics):
    """In this process's ``prometheus_client`` registry (the PyTriton host)."""

    def __init__(self, model: str) -> None:
        super().__init__(
            _SLOTS.labels(model), _SLOTS_BUSY.labels(model), _TOKENS.labels(model),
            _FIRST_TOKEN.labels(model), _QUEUE.labels(model), add="inc",
        )  # fmt: skip


class TritonChatMetrics(_ChatMetrics):
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
        super().__init__(
            self._families["slots"].Metric(labels), self._families["busy"].Metric(labels),
            self._families["tokens"].Metric(labels), self._families["first_token"].Metric(labels, buckets),
            self._families["queue"].Metric(labels, buckets), add="increment",
        )  # fmt: skip
