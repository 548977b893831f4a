"""Step-level batching on a stock Triton server: a role that decodes step by step, served through
Triton's iterative sequences.

Triton's sequence batcher (``iterative_sequence: true``, rendered by ``triton_repository``) makes
each request a sequence. An execution brings the requests that arrived since the last one and
those still decoding; the model hands the new ones to the role, answers those that are done and
reschedules the others, which come back in a later execution. A request that arrives while others
decode therefore joins them at once instead of waiting for a whole batch to end.

The role decodes on a thread of its own (``StepwiseHandler``), step after step while it holds
requests: the server's work between two executions (rescheduling, forming the next batch, moving
requests to and from the Python process) is done while the GPU decodes, not between its steps. An
execution returns as soon as one of its requests is answered, or after ``wait_s``: the longest a
request that arrived meanwhile waits to join.

``StepwiseHandler`` knows nothing of the server: the Python backend (``python_backend``) passes it
each request's key (Triton's correlation id) and, the first time, its tensors.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from contract import codec, tensors
from contract.records import InputError, ModelBusy

if TYPE_CHECKING:
    from milo_voice.roles.translate import StepwiseTranslations

log = logging.getLogger(__name__)

Outputs = codec.Arrays


class StepwiseHandler:
    """The requests a role decodes step by step on its own thread, by key; each one's rows answered
    as they end. Thread-safe: the server's execution thread calls it while the role decodes.

    Only the role's thread touches the role: the execution thread posts what it brings (requests
    taken, requests cancelled) to an inbox that the role's thread reads between two steps, and
    reads the answers that thread records. A lock held through a decoding step would let the
    role's thread take it back step after step, and starve the server's executions.
    """

    def __init__(self, io: tensors.ModelIO, role: StepwiseTranslations, wait_s: float) -> None:
        self.io, self.role, self.wait_s = io, role, wait_s
        self._answers: dict[Hashable, list[Any]] = {}  # a request's rows: answer, or None while decoding
        self._changed = threading.Condition()  # guards _answers, held briefly
        self._inbox: queue.SimpleQueue[tuple[str, Hashable, Any]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._decode, name=f"{io.name}-steps", daemon=True)
        self._thread.start()

    def holds(self, key: Hashable) -> bool:
        with self._changed:
            return key in self._answers

    def take(self, key: Hashable, inputs: codec.Arrays) -> None:
        """A request seen for the first time: its readable rows go to the role, the others are
        answered with their ``InputError``. Rows the role cannot take (its waiting line is full)
        make the request's answer ``ModelBusy``."""
        rows = codec.unpack_requests(self.io, inputs)
        # A refusal kept until its request is answered must not keep its traceback: its frames
        # hold this execution's request objects, and a rescheduled request's object that outlives
        # its execution holds a response factory, which keeps Triton from unloading the model.
        answers = [row.with_traceback(None) if isinstance(row, InputError) else None for row in rows]
        with self._changed:
            self._answers[key] = answers
        self._inbox.put(("take", key, rows))

    def wait(self, keys: list[Hashable]) -> None:
        """Until one of ``keys`` is answered (or none is held), or ``wait_s`` has passed."""
        if not keys:
            return
        with self._changed:
            self._changed.wait_for(lambda: any(self._done(key) for key in keys), timeout=self.wait_s)

    def answer(self, key: Hashable) -> Outputs | Exception | None:
        """The outputs of a request whose every row is answered (it is then forgotten), the error
        that failed it (``ModelBusy``, or the role's failure), or None while it decodes."""
        with self._changed:
            if not self._done(key):
                return None
            answers = self._answers.pop(key)
        failure = next((a for a in answers if isinstance(a, Exception) and not isinstance(a, InputError)), None)
        return failure or codec.pack_results(self.io, answers)

    def cancel(self, key: Hashable) -> None:
        """Forget a request (its client has gone): its rows stop decoding."""
        with self._changed:
            answers = self._answers.pop(key, None)
        if answers is not None:
            self._inbox.put(("cancel", key, len(answers)))

    def close(self) -> None:
        self._inbox.put(("stop", None, None))
        self._thread.join(timeout=10)

    def _done(self, key: Hashable) -> bool:
        answers = self._answers.get(key)
        return answers is None or all(a is not None for a in answers)

    def _decode(self) -> None:
        while True:
            # Between two steps, what the executions posted; with nothing to decode, wait for it.
            while not self._inbox.empty() or not self.role.busy:
                verb, key, what = self._inbox.get()
                if verb == "stop":
                    return
                if verb == "take":
                    self._submit(key, what)
                else:
                    for index in range(what):
                        self.role.cancel((key, index))
            try:
                done = self.role.advance(1)
            except Exception as exc:  # the role failed: what it held fails with it, the thread goes on
                log.exception("a decoding step failed")
                self._fail_all(exc.with_traceback(None))
                continue
            if done:
                with self._changed:
                    for (key, index), result in done.items():
                        if key in self._answers:  # else cancelled meanwhile
                            self._answers[key][index] = result
                    self._changed.notify_all()

    def _submit(self, key: Hashable, rows: list[Any]) -> None:
        refusals: dict[int, Any] = {}
        submitted: list[int] = []
        try:
            for index, row in enumerate(rows):
                if isinstance(row, InputError):
                    continue
                refusal = self.role.submit((key, index), row)
                if refusal is None:
                    submitted.append(index)
                else:
                    refusals[index] = refusal.with_traceback(None)
        except ModelBusy as exc:  # none of its rows is kept
            for index in submitted:
                self.role.cancel((key, index))
            busy = exc.with_traceback(None)
            refusals = dict.fromkeys(range(len(rows)), busy)
        if refusals:
            with self._changed:
                if key in self._answers:
                    for index, refusal in refusals.items():
                        self._answers[key][index] = refusal
                    self._changed.notify_all()

    def _fail_all(self, error: Exception) -> None:
        with self._changed:
            for key, answers in self._answers.items():
                for index, answer in enumerate(answers):
                    if answer is None:
                        self.role.cancel((key, index))
                        answers[index] = error
            self._changed.notify_all()
