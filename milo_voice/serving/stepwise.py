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
import threading
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from contract import codec, tensors
from contract.records import InputError

if TYPE_CHECKING:
    from milo_voice.roles.translate import StepwiseTranslations

log = logging.getLogger(__name__)

Outputs = codec.Arrays


class StepwiseHandler:
    """The requests a role decodes step by step on its own thread, by key; each one's rows answered
    as they end. Thread-safe: the server's execution thread calls it while the role decodes."""

    def __init__(self, io: tensors.ModelIO, role: StepwiseTranslations, wait_s: float) -> None:
        self.io, self.role, self.wait_s = io, role, wait_s
        self._answers: dict[Hashable, list[Any]] = {}  # a request's rows: answer, or None while decoding
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._decode, name=f"{io.name}-steps", daemon=True)
        self._thread.start()

    def holds(self, key: Hashable) -> bool:
        with self._changed:
            return key in self._answers

    def take(self, key: Hashable, inputs: codec.Arrays) -> None:
        """A request seen for the first time: its readable rows start decoding, the others are
        answered with their ``InputError``. Raises ``ModelBusy`` where its rows would wait past
        the role's bound (then none of them is kept)."""
        rows = codec.unpack_requests(self.io, inputs)
        answers: list[Any] = []
        with self._changed:
            try:
                for index, row in enumerate(rows):
                    answers.append(row if isinstance(row, InputError) else self.role.submit((key, index), row))
            except Exception:
                for index in range(len(answers)):
                    self.role.cancel((key, index))
                raise
            # A refusal kept until its request is answered must not keep its traceback: its frames
            # hold this execution's request objects, and a rescheduled request's object that outlives
            # its execution holds a response factory, which keeps Triton from unloading the model.
            self._answers[key] = [a.with_traceback(None) if isinstance(a, Exception) else a for a in answers]
            self._changed.notify_all()

    def wait(self, keys: list[Hashable]) -> None:
        """Until one of ``keys`` is answered (or none is held), or ``wait_s`` has passed."""
        if not keys:
            return
        with self._changed:
            self._changed.wait_for(lambda: any(self._done(key) for key in keys), timeout=self.wait_s)

    def answer(self, key: Hashable) -> Outputs | Exception | None:
        """The outputs of a request whose every row is answered (it is then forgotten), the error
        that failed it, or None while it decodes."""
        with self._changed:
            if not self._done(key):
                return None
            answers = self._answers.pop(key)
        failure = next((a for a in answers if isinstance(a, Exception) and not isinstance(a, InputError)), None)
        return failure or codec.pack_results(self.io, answers)

    def cancel(self, key: Hashable) -> None:
        """Forget a request (its client has gone): its rows stop decoding."""
        with self._changed:
            for index in range(len(self._answers.pop(key, []))):
                self.role.cancel((key, index))

    def close(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join(timeout=10)

    def _done(self, key: Hashable) -> bool:
        answers = self._answers.get(key)
        return answers is None or all(a is not None for a in answers)

    def _decode(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._stopping or self.role.busy)
                if self._stopping:
                    return
                try:
                    done = self.role.advance(1)
                except Exception as exc:  # the role failed: what it held fails with it, the thread goes on
                    log.exception("a decoding step failed")
                    self._fail_all(exc.with_traceback(None))
                    continue
                for (key, index), result in done.items():
                    self._answers[key][index] = result
                if done:
                    self._changed.notify_all()

    def _fail_all(self, error: Exception) -> None:
        for key, answers in self._answers.items():
            for index, answer in enumerate(answers):
                if answer is None:
                    self.role.cancel((key, index))
                    answers[index] = error
        self._changed.notify_all()
