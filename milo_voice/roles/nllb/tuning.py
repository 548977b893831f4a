"""The step's kernels chosen at load: where an option says "auto", the ways timed side by side on
the model's own buffers, the faster kept. Where there is no CUDA device, "auto" is the fused kernel
and one selection: nothing is timed (the search is served from a GPU).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from milo_voice.roles.nllb.kernels import AUTO, STEP_ATTENTIONS, TOPS, UNTIMED, ChosenKernels, StepKernels
from milo_voice.roles.nllb.model import NllbModel
from milo_voice.roles.nllb.search import top_of_rows

log = logging.getLogger(__name__)

# The source and the positions written that a step is timed over: sentences of a few dozen tokens.
TIMED_SOURCE, TIMED_SPAN = 32, 32
# The ways alternate, round by round, each round timing CALLS calls of each; a way's time is its
# fastest round: other work on the GPU only ever adds time. That is no cure for a GPU busy the
# whole time (two loads of four beside other models' warm-ups kept the slower way, by medians
# and by fastest rounds alike): a load that times has the GPU to itself (serving/gpu_turns.py).
ROUNDS, CALLS = 15, 4


def choose(
    model: NllbModel, kernels: StepKernels, rows: int, candidates: int, timed_here: bool | None = None
) -> ChosenKernels:
    """Set ``model``'s step attention and pick the best logits' way for steps of ``rows`` rows that
    keep ``candidates`` a row: those named, or where "auto" the faster of each on the model's device
    (a step of ``rows`` rows over ``TIMED_SOURCE`` source tokens and ``TIMED_SPAN`` positions, and
    its logits).
    ``timed_here``: whether "auto" is timed on this device (default: on a CUDA device only)."""
    attention, top = kernels.attention, kernels.top
    if not (model.device.type == "cuda" if timed_here is None else timed_here):
        attention = UNTIMED.attention if attention == AUTO else attention
        top = UNTIMED.top if top == AUTO else top
    timed: dict[str, float] = {}
    if AUTO in (attention, top):
        model.reserve(rows, TIMED_SOURCE)
        span = min(TIMED_SPAN, model.max_length)
        tokens = torch.zeros(rows, dtype=torch.long, device=model.device)
        positions = torch.full_like(tokens, span - 1)

        def step() -> torch.Tensor:
            return model.step(tokens, positions, TIMED_SOURCE, span)

        if attention == AUTO:
            ways = {way: _with_attention(model, way, step) for way in STEP_ATTENTIONS}
            attention, attention_ms = fastest(ways, model.device)
            timed.update({f"attention_{way}": ms for way, ms in attention_ms.items()})
        if top == AUTO:
            logits = step().clone()
            ways = {way: functools.partial(top_of_rows, logits, candidates, passes) for way, passes in TOPS.items()}
            top, top_ms = fastest(ways, model.device)
            timed.update({f"top_{way}": ms for way, ms in top_ms.items()})
    model.step_attention = attention
    chosen = ChosenKernels(attention, top, timed)
    log.info("search steps: attention %s, best logits in %s (timed at load, ms: %s)", attention, top, timed or "none")
    return chosen


def _with_attention(model: NllbModel, way: str, step: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        model.step_attention = way  # its step graph, once captured, is kept for the next round
        return step()

    return run


def fastest(ways: dict[str, Callable[[], Any]], device: torch.device) -> tuple[str, dict[str, float]]:
    """The name of the fastest of ``ways`` and each one's milliseconds a call in its fastest round.
    The ways run in turn, round after round, so that a GPU's clocks weigh on each alike; each is
    called before timing (a graph's capture, a kernel's first launch)."""
    for way in ways.values():
        way()
    rounds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(ROUNDS):
        for name, way in ways.items():
            way()  # after a way's switch, the first call pays for it
            _synchronize(device)
            started = time.perf_counter()
            for _ in range(CALLS):
                way()
            _synchronize(device)
            rounds[name].append((time.perf_counter() - started) * 1000 / CALLS)
    best = {name: round(min(times), 4) for name, times in rounds.items()}
    return min(best, key=best.__getitem__), best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
