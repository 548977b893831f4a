"""Step-level batching: a role that decodes step by step, serving requests as they come.

The role decodes on a thread of its own (``StepwiseHandler``), step after step while it holds
requests. A request handed over while others decode joins them at the next step, and each is
answered as soon as its last sentence ends, through ``emit``: the stock server's Python backend
sends that answer with the request's response sender, as it does a chat reply. The model stays an
ordinary (not decoupled) Triton model with its dynamic batcher: clients call it as before.

Triton's execution only hands requests over, and returns once each holds rows in the role's search
(``start``'s event). Requests beyond the rows wait in Triton's queue, where priorities, queue
timeouts and the queue's bound apply, not in the role's. Triton's work on a request (its queue,
the batch, moving it to and from the Python process) is done once, while the GPU decodes.

Only the role's thread touches the role: ``start`` posts to its inbox, which it reads between two
steps.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from contract import codec, tensors
from contract.records import InputError

if TYPE_CHECKING:
    from milo_voice.registry import ModelSpec
    from milo_voice.roles.translate import StepwiseTranslations
    from milo_voice.serving.instances import Device

log = logging.getLogger(__name__)

Outputs = codec.Arrays
Emit = Callable[[Outputs | Exception], None]
# How often a request's client is asked whether it has gone, at most (a Triton request's
# is_cancelled is a round trip to the server).
CANCEL_POLL_S = 0.05


def step_batching(spec: ModelSpec, device: Device) -> bool:
    """Whether ``spec`` is served with step-level batching on ``device``: its ``step_batching``
    parameter (``gpu_step_batching`` on a GPU), for a role that decodes step by step."""
    wanted = bool(spec.params.get("gpu_step_batching" if device.kind == "cuda" else "step_batching", False))
    if wanted and spec.role != "translate":
        raise ValueError(f"model {spec.name!r}: step batching is for translation's torch engine, not {spec.role}")
    return wanted


class StoppedError(RuntimeError):
    """The model was unloaded before the request was answered."""


@dataclass
class _Request:
    rows: list[Any]  # each row's request record, or its InputError
    emit: Emit
    is_cancelled: Callable[[], bool] | None
    admitted: threading.Event = field(default_factory=threading.Event)
    answers: list[Any] = field(default_factory=list)  # each row's answer, None while it decodes


class StepwiseHandler:
    """Requests decoded step by step on the role's own thread, each answered through its ``emit``."""

    def __init__(self, io: tensors.ModelIO, role: StepwiseTranslations) -> None:
        self.io, self.role = io, role
        self._inbox: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._keys = itertools.count()
        self._running: dict[int, _Request] = {}  # the role's thread's own
        self._thread = threading.Thread(target=self._decode, name=f"{io.name}-steps", daemon=True)
        self._thread.start()

    def start(
        self, inputs: codec.Arrays, emit: Emit, is_cancelled: Callable[[], bool] | None = None
    ) -> threading.Event:
        """Hand a request over; the event is set once all its rows hold rows in the search (or it
        has ended). Its outputs, or the exception that failed it, go to ``emit`` once."""
        # A refusal kept until its request ends must not keep the frames of the execution that read it.
        rows = [
            r.with_traceback(None) if isinstance(r, InputError) else r for r in codec.unpack_requests(self.io, inputs)
        ]
        request = _Request(rows, emit, is_cancelled)
        self._inbox.put(request)
        return request.admitted

    def close(self) -> None:
        """Stop the role's thread; what it still holds is answered ``StoppedError``."""
        self._inbox.put(None)
        self._thread.join(timeout=10)

    def _decode(self) -> None:
        polled = time.monotonic()
        while True:
            # Between two steps, what was handed over; with nothing to decode, wait for it.
            while not self._inbox.empty() or not self.role.busy:
                request = self._inbox.get()
                if request is None:
                    self._fail_all(StoppedError("the model was unloaded"))
                    return
                self._begin(request)
            try:
                done = self.role.advance(1)
            except Exception as exc:  # the role failed: what it held fails with it, the thread goes on
                log.exception("a decoding step failed")
                self._fail_all(exc.with_traceback(None))
                continue
            for (key, index), result in done.items():
                self._running[key].answers[index] = result
                self._end_if_answered(key)
            self._admit()
            if time.monotonic() - polled >= CANCEL_POLL_S:
                polled = time.monotonic()
                self._drop_cancelled()

    def _begin(self, request: _Request) -> None:
        key = next(self._keys)
        self._running[key] = request
        request.answers = [
            row if isinstance(row, InputError) else self.role.submit((key, index), row)
            for index, row in enumerate(request.rows)
        ]
        request.answers = [a.with_traceback(None) if isinstance(a, InputError) else a for a in request.answers]
        self._end_if_answered(key)
        self._admit()

    def _end_if_answered(self, key: int) -> None:
        request = self._running[key]
        if all(answer is not None for answer in request.answers):
            del self._running[key]
            request.admitted.set()
            request.emit(codec.pack_results(self.io, request.answers))

    def _admit(self) -> None:
        for key, request in self._running.items():
            if not request.admitted.is_set() and not any(self.role.waits((key, i)) for i in range(len(request.rows))):
                request.admitted.set()

    def _drop_cancelled(self) -> None:
        for key, request in list(self._running.items()):
            if request.is_cancelled is not None and request.is_cancelled():
                for index in range(len(request.rows)):
                    self.role.cancel((key, index))
                del self._running[key]
                request.admitted.set()
                request.emit(InputError("the request was cancelled"))

    def _fail_all(self, error: Exception) -> None:
        for key, request in self._running.items():
            for index in range(len(request.rows)):
                self.role.cancel((key, index))
            request.admitted.set()
            request.emit(error)
        self._running.clear()
