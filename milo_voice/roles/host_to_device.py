"""Host tensors moved to a GPU behind the work already queued there, without waiting for it.

A copy from ordinary (pageable) host memory to a GPU first waits for the device to finish everything
queued before it (CUDA's documented behaviour for such copies): a decoding loop that sends a few
indices between two kernels would stall the host on the GPU each time, and could no longer queue
the next kernels while the GPU runs. From page-locked memory the copy is queued like a kernel.
PyTorch's pinned-memory cache keeps each page-locked block until the copy that reads it has run.
"""

from __future__ import annotations

import torch


def queued_copy(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the host) on ``device``, the copy queued behind the device's work."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def write_queued(target: torch.Tensor, source: torch.Tensor) -> None:
    """Write host tensor ``source`` into device tensor ``target``, the copy queued behind the device's work."""
    target.copy_(source.pin_memory() if target.device.type == "cuda" else source, non_blocking=True)
