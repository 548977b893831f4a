"""Step-level batching: a role that decodes step by step, serving requests as they come.

The role decodes on a thread of its own (``StepwiseHandler``), step after step while it holds
requests. A request handed over while others decode joins them at the next step, and each is
answered as soon as its last sentence ends, through ``emit``: the stock server's Python backend
sends that answer with the request's response sender, as it does a chat reply. The model stays an
ordinary (not decoupled) Triton model with its dynamic batcher: clients call it as before.

Triton's execution only hands requests over, and returns once the role's next step admits each
(``dequeued``: there are rows for its sentences; as a chat request once it holds a slot, the
Python backend drives both alike). The role's thread keeps two steps queued on the GPU: it
launches the next step behind the one decoding and, while they decode, sends the last step's
answers, takes in what was handed over, admits it to the rows free (its encoder pass queued behind
the steps) and releases the requests that found rows; only then does it wait for the older step.
So Triton hands over the next requests, and the host does its work, while the GPU decodes, and
the GPU goes from one step to the next without waiting for the host.
Requests beyond the rows wait in Triton's queue, where priorities, queue timeouts and the queue's
bound apply, not in the role's. Triton's work on a request (its queue, the batch, moving it to and
from the Python process) is done once, while the GPU decodes.

Only the role's thread touches the role: ``start`` posts to its inbox, which it reads before each
step and while the step decodes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from contract import codec, tensors
from contract.records import InputError
from milo_voice.serving.tensor_io import Emit, Outputs

if TYPE_CHECKING:
    from milo_voice.registry import ModelSpec
    from milo_voice.roles.translate import StepwiseTranslations
    from milo_voice.serving.instances import Device

log = logging.getLogger(__name__)

# How long a request decodes before its client is asked whether it has gone, and then between two
# asks: a Triton request's is_cancelled is a round trip to the server, which the role's thread
# makes between two steps, so most translations, done sooner, are never asked.
CANCEL_POLL_S = 0.25


def step_batching(spec: ModelSpec, device: Device) -> bool:
    """Whether ``spec`` is served with step-level batching on ``device``: its ``step_batching``
    parameter (``gpu_step_batching`` on a GPU); the registry has checked that its role and engine
    decode step by step."""
    return bool(spec.params.get("gpu_step_batching" if device.kind == "cuda" else "step_batching", False))


class SearchObserver(Protocol):
    """What the role's thread reports of each step (``search_metrics.TritonSearchMetrics``)."""

    def step(self, sentences: int, seconds: float) -> None:
        """A step collected: the sentences it decoded, and the time since the step before was
        collected (or since it was launched, the first after an idle spell)."""

    def flush(self) -> None: ...


class StoppedError(RuntimeError):
    """The model was unloaded before the request was answered."""


@dataclass
class _Request:
    rows: list[Any]  # each row's request record, or its InputError
    emit: Emit
    is_cancelled: Callable[[], bool] | None
    dequeued: threading.Event = field(default_factory=threading.Event)  # the next step admits it, or it ended
    asked_at: float = field(default_factory=time.monotonic)  # when its client was last asked (or it came)
    answers: list[Any] = field(default_factory=list)  # each row's answer, None while it decodes

    @property
    def answered(self) -> bool:
        return all(answer is not None for answer in self.answers)


class StepwiseHandler:
    """Requests decoded step by step on the role's own thread, each answered through its ``emit``."""

    def __init__(self, io: tensors.ModelIO, role: StepwiseTranslations, observer: SearchObserver | None = None) -> None:
        self.io, self.role, self.observer = io, role, observer
        self._inbox: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._keys = itertools.count()
        self._running: dict[int, _Request] = {}  # the role's thread's own
        self._thread = threading.Thread(target=self._decode, name=f"{io.name}-steps", daemon=True)
        self._thread.start()

    def start(self, inputs: codec.Arrays, emit: Emit, is_cancelled: Callable[[], bool] | None = None) -> _Request:
        """Hand a request over; its ``dequeued`` is set once the search's next step admits all its
        sentences (or it has ended). Its outputs, or the exception that failed it, go to ``emit`` once, final."""
        # A refusal kept until its request ends must not keep the frames of the execution that read it.
        rows = [_bare(row) for row in codec.unpack_requests(self.io, inputs)]
        request = _Request(rows, emit, is_cancelled)
        self._inbox.put(request)
        return request

    def close(self) -> None:
        """Stop the role's thread; what it still holds is answered ``StoppedError``."""
        self._inbox.put(None)
        self._thread.join(timeout=10)

    def _decode(self) -> None:
        finished: list[int] = []  # requests the last step answered in full, sent while the next decodes
        stopping = False
        since = time.perf_counter()  # when the last step was collected
        while not stopping:
            # With nothing to decode, what was answered goes out, then the thread waits for a request.
            while not self.role.busy and not stopping:
                self._end_answered(finished)
                if self.observer is not None:
                    self.observer.flush()  # what was counted goes out before the wait
                stopping = not self._begin_next(block=True)
            stopping = stopping or not self._take_inbox()  # what came while the last step was collected
            if stopping:
                break
            if not self.role.in_flight:
                since = time.perf_counter()  # the first step after an idle spell: timed from its launch
            try:
                self.role.launch_ahead()
                # While the device decodes: the last step's answers go out, what was handed over
                # meanwhile takes the rows free, and the requests that found rows are released.
                self._end_answered(finished)
                stopping = not self._take_inbox()
                self.role.admit()
                self._release_admitted()
                stepped = self.role.in_flight > 0
                done = self.role.collect()
            except Exception as exc:  # the role failed: what it held fails with it, the thread goes on
                log.exception("a decoding step failed")
                self._end_answered(finished)
                for _ in range(self.role.in_flight):  # what was launched is collected, or none launches again
                    with contextlib.suppress(Exception):
                        self.role.collect()
                self._fail_all(exc.with_traceback(None))
                continue
            if self.observer is not None and stepped:
                collected = time.perf_counter()
                self.observer.step(self.role.last_step_sentences, collected - since)
                since = collected
            for (key, index), result in done.items():
                self._running[key].answers[index] = result
                if self._running[key].answered:
                    finished.append(key)
            self._drop_cancelled()
        self._end_answered(finished)
        self._fail_all(StoppedError("the model was unloaded"))
        if self.observer is not None:
            self.observer.flush()

    def _take_inbox(self) -> bool:
        """Begin every request handed over, without waiting; False once the thread is to stop."""
        while not self._inbox.empty():
            if not self._begin_next(block=False):
                return False
        return True

    def _begin_next(self, block: bool) -> bool:
        request = self._inbox.get(block=block)
        if request is None:
            return False
        self._begin(request)
        return True

    def _end_answered(self, keys: list[int]) -> None:
        """Send the answers of these requests, answered in full, and forget them."""
        for key in keys:
            self._end(key, codec.pack_results(self.io, self._running[key].answers))
        keys.clear()

    def _begin(self, request: _Request) -> None:
        key = next(self._keys)
        self._running[key] = request
        try:
            request.answers = [
                row if isinstance(row, InputError) else _bare(self.role.submit((key, index), row))
                for index, row in enumerate(request.rows)
            ]
        except Exception as exc:  # this request fails alone; the others decode on
            log.exception("a request could not be queued")
            self._end(key, exc.with_traceback(None))
            return
        if request.answered:  # every row refused: nothing to decode
            self._end(key, codec.pack_results(self.io, request.answers))

    def _release_admitted(self) -> None:
        """Set ``dequeued`` for the requests none of whose sentences waits for rows."""
        if all(request.dequeued.is_set() for request in self._running.values()):
            return
        waiting = self.role.waiting()
        for key, request in self._running.items():
            if not request.dequeued.is_set() and not any((key, i) in waiting for i in range(len(request.rows))):
                request.dequeued.set()

    def _drop_cancelled(self) -> None:
        """End the requests, decoding for ``CANCEL_POLL_S`` since they were last asked, whose client
        has gone (one answered in full is sent anyway)."""
        now = time.monotonic()
        for key, request in list(self._running.items()):
            if request.is_cancelled is None or now - request.asked_at < CANCEL_POLL_S:
                continue
            if request.answered:
                continue
            request.asked_at = now
            if request.is_cancelled():
                self._end(key, InputError("the request was cancelled"))

    def _fail_all(self, error: Exception) -> None:
        for key in list(self._running):
            self._end(key, error)

    def _end(self, key: int, answer: Outputs | Exception) -> None:
        """Answer a request and forget it; what of it still decodes stops."""
        request = self._running.pop(key)
        for index in range(len(request.rows)):
            self.role.cancel((key, index))
        request.dequeued.set()
        request.emit(answer, True)


def _bare(row: Any) -> Any:
    """A refusal without its traceback, whose frames would keep an execution's request objects."""
    return row.with_traceback(None) if isinstance(row, InputError) else row
