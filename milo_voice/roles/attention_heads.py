"""Splitting projections into attention heads and merging them back: the layout every torch model
beside a CTranslate2 one (Whisper's decoder, NLLB) computes attention in."""

from __future__ import annotations

import torch


def split_heads(x: torch.Tensor, head_width: int) -> torch.Tensor:
    """``[batch, length, n x width]`` to ``[batch, n x heads, length, head width]``."""
    batch, length, _ = x.shape
    return x.view(batch, length, -1, head_width).transpose(1, 2)


def merge_heads(attended: torch.Tensor) -> torch.Tensor:
    """``[batch, heads, length, head width]`` to ``[batch, length, heads x head width]``."""
    batch, heads, length, head_width = attended.shape
    return attended.transpose(1, 2).reshape(batch, length, heads * head_width)
