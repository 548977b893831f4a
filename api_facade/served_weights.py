"""Which weights the served models run, as their replies say (``Translation.revision``: a content
hash of the weights, ``milo_voice.weights.identity``).

The translation cache keys by it, so that new or fine-tuned weights never answer from what older
ones wrote. A revision is learned from a reply and trusted until a Triton server comes back into
rotation (``ModelCalls.restarts``): a server that restarted may serve other weights, so until its
next reply the cache is written but not read.
"""

from __future__ import annotations

from api_facade.metrics import WEIGHTS


class ServedRevisions:
    def __init__(self) -> None:
        self._known: dict[str, tuple[str, int]] = {}  # model -> (revision, restarts when learned)

    def learn(self, model: str, revision: str, restarts: int) -> None:
        if not revision:
            return
        previous = self._known.get(model)
        if previous is not None and previous[0] != revision:
            WEIGHTS.labels(model, previous[0]).set(0)  # (workers share gauges: set, never removed)
        self._known[model] = (revision, restarts)
        WEIGHTS.labels(model, revision).set(1)

    def current(self, model: str, restarts: int) -> str | None:
        """The revision ``model`` serves, if nothing may have changed it since it was learned."""
        known = self._known.get(model)
        return known[0] if known is not None and known[1] == restarts else None

    def view(self) -> dict[str, str]:
        """Each model's last known revision (for ``/ready``)."""
        return {model: revision for model, (revision, _) in sorted(self._known.items())}
