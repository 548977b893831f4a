"""How a search step runs its two largest parts on a GPU: the ways, and the option that names one.

A step's attention (one query position a row) runs as torch's fused kernel or as two batched
products (``attend_one_position``); each row's best logits over the vocabulary in one selection or
in two passes (``row_top``). Which is faster depends on the GPU, torch's kernels and the shapes, so
"auto" leaves the choice to timing at load (``milo_voice.roles.nllb.tuning``). Free of torch: a
host's settings read it before any engine loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

AUTO = "auto"
STEP_ATTENTIONS = ("fused", "products")
TOPS = {"one_pass": 1, "two_passes": 2}  # each row's best logits: passes over the vocabulary


@dataclass(frozen=True)
class StepKernels:
    """What a step's attention and its best logits run as: a way by name, or "auto"."""

    attention: str = AUTO
    top: str = AUTO

    def __post_init__(self) -> None:
        if self.attention not in (AUTO, *STEP_ATTENTIONS):
            raise ValueError(f"step attention {self.attention!r}: one of {AUTO}, {', '.join(STEP_ATTENTIONS)}")
        if self.top not in (AUTO, *TOPS):
            raise ValueError(f"step top {self.top!r}: one of {AUTO}, {', '.join(TOPS)}")

    @property
    def timed_at_load(self) -> bool:
        """Whether a way is left to "auto", which a load on a GPU times."""
        return AUTO in (self.attention, self.top)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> StepKernels:
        """From a model's registry params (``gpu_step_attention``, ``gpu_step_top``)."""
        return cls(str(params.get("gpu_step_attention", AUTO)), str(params.get("gpu_step_top", AUTO)))


@dataclass(frozen=True)
class ChosenKernels:
    """The ways a model's steps run, and the milliseconds each way took where they were timed."""

    attention: str
    top: str
    timed_ms: dict[str, float] = field(default_factory=dict)

    @property
    def top_passes(self) -> int:
        return TOPS[self.top]


CHOSEN_AT_LOAD = StepKernels()  # every way "auto"
# The ways where nothing is timed (off a GPU, or before a load chooses): torch's fused kernel, one selection.
UNTIMED = ChosenKernels(STEP_ATTENTIONS[0], "one_pass")
