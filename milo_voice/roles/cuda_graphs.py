"""Recording a computation as a CUDA graph, the way the torch decoders beside CTranslate2's models
(Whisper's, NLLB's) capture their steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

Output = TypeVar("Output")


def capture(
    device: torch.device, run: Callable[[], Output], pool: tuple[int, int] | None = None
) -> tuple[torch.cuda.CUDAGraph, Output]:
    """``run`` recorded as a graph, and what the recorded run returns (tensors the graph's replays
    write again). Capture needs warm-up runs on a side stream first: those run for real, so what
    they change is the caller's to put back where it matters. The recorded run itself does not run.
    ``pool``: a memory pool shared with other graphs (``torch.cuda.graph_pool_handle``), for graphs
    whose outputs nobody reads after another of them has run."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            run()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # thread_local: other threads of the process (other models) may use the GPU meanwhile.
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        output = run()
    return graph, output
