"""Step-level batching on a stock Triton server: a role that decodes step by step, served through
Triton's iterative sequences.

Triton's sequence batcher (``iterative_sequence: true``, rendered by ``triton_repository``) makes
each request a sequence. An execution brings the requests that arrived since the last one and
those still decoding; the model decodes a few steps of all of them and answers those that are
done; the others it reschedules, and they come back in a later execution. A request that arrives
while others decode therefore joins them at the next execution instead of waiting for a whole
batch to end, and the GPU is not left idle while a batch's answers travel and the next forms.

``StepwiseHandler`` knows nothing of the server: the Python backend (``python_backend``) passes it
each request's key (Triton's correlation id) and, the first time, its tensors. The role keeps
its own state between executions (``StepwiseTranslations``).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from contract import codec, tensors
from contract.records import InputError

if TYPE_CHECKING:
    from milo_voice.roles.translate import StepwiseTranslations

log = logging.getLogger(__name__)

Outputs = codec.Arrays


class StepwiseHandler:
    """The requests a role decodes step by step, by key; each one's rows answered as they end.

    ``steps``: decoding steps per execution. More spend less of the GPU's time on the server's
    rescheduling between steps; fewer answer an ended request sooner and let new ones join sooner.
    """

    def __init__(self, io: tensors.ModelIO, role: StepwiseTranslations, steps: int) -> None:
        if steps < 1:
            raise ValueError("steps per execution: 1 or more")
        self.io, self.role, self.steps = io, role, steps
        self._answers: dict[Hashable, list[Any]] = {}  # a request's rows: answer, or None while decoding

    def holds(self, key: Hashable) -> bool:
        return key in self._answers

    def take(self, key: Hashable, inputs: codec.Arrays) -> None:
        """A request seen for the first time: its readable rows start decoding, the others are
        answered with their ``InputError``. Raises ``ModelBusy`` where its
        rows would wait past the role's bound (then none of them is kept)."""
        answers: list[Any] = []
        try:
            for index, row in enumerate(codec.unpack_requests(self.io, inputs)):
                answers.append(row if isinstance(row, InputError) else self.role.submit((key, index), row))
        except Exception:
            for index in range(len(answers)):
                self.role.cancel((key, index))
            raise
        # A refusal kept until its request is answered must not keep its traceback: the frames hold
        # this execution's request objects, and a rescheduled request's object that outlives its
        # execution holds a response factory, which keeps Triton from ever unloading the model.
        self._answers[key] = [a.with_traceback(None) if isinstance(a, Exception) else a for a in answers]

    def advance(self) -> None:
        """Decode ``steps`` steps of every request held (fewer where all end sooner)."""
        for (key, index), result in self.role.advance(self.steps).items():
            self._answers[key][index] = result

    def answer(self, key: Hashable) -> Outputs | None:
        """The outputs of a request whose every row is answered (it is then forgotten), else None."""
        answers = self._answers.get(key)
        if answers is None or any(a is None for a in answers):
            return None
        del self._answers[key]
        return codec.pack_results(self.io, answers)

    def cancel(self, key: Hashable) -> None:
        """Forget a request (its client has gone, or it failed): its rows stop decoding."""
        for index in range(len(self._answers.pop(key, []))):
            self.role.cancel((key, index))

    def cancel_all(self) -> None:
        """After the role failed: forget everything held. A request still in flight comes back
        (rescheduled) and is taken again from its tensors, as new."""
        for key in list(self._answers):
            self.cancel(key)
