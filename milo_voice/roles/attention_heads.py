"""Splitting projections into attention heads and merging them back: the layout every torch model
beside a CTranslate2 one (Whisper's decoder, NLLB) computes attention in; and attention of a
decoding step's one query position."""

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


def float_scores_supported(device: torch.device, dtype: torch.dtype, head_width: int) -> bool:
    """Whether ``attend_one_position`` on ``device`` can take its scores in float32 out of a product
    of ``dtype`` (cuBLAS's float accumulation kept, not rounded to ``dtype``): tried once, on
    slices of a small cache laid out as a step reads it. CUDA's half-precision products can."""
    if device.type != "cuda" or dtype == torch.float32:
        return False
    cache = torch.ones(3, 2, 8, head_width, dtype=dtype, device=device)[:2, :, :4]
    query = torch.ones(2, 2, 1, head_width, dtype=dtype, device=device)
    visible = torch.ones(2, 1, 1, 4, dtype=torch.bool, device=device)
    try:
        attend_one_position(query, cache, cache, visible, float_scores=True)
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return True


def attend_one_position(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor, float_scores: bool
) -> torch.Tensor:
    """``scaled_dot_product_attention`` of one query position a row: ``query`` ``[batch, heads, 1,
    head width]`` over ``keys`` and ``values`` ``[batch, heads, positions, head width]`` where
    ``visible`` (``[batch, 1, 1, positions]``, at least one position a row), as two batched matrix
    products around a softmax in float32. For a masked query of one position torch runs its
    memory-efficient kernel, whose tiles hold 64 query positions, of which a decoding step fills
    one. ``keys`` and ``values`` may be
    slices of a cache whose batch and heads are evenly strided (they are viewed, not copied).
    ``float_scores``: the scores come out of the product in float32 (``float_scores_supported``)."""
    batch, heads, _, width = query.shape
    scaled = (query * width**-0.5).reshape(batch * heads, 1, width)
    key_rows = keys.reshape(batch * heads, -1, width).transpose(1, 2)
    if float_scores:
        scores = torch.bmm(scaled, key_rows, out_dtype=torch.float32)
    else:
        scores = torch.bmm(scaled, key_rows).float()
    scores = scores.view(batch, heads, 1, -1).masked_fill(~visible, float("-inf"))
    weights = scores.softmax(dim=-1).to(values.dtype).view(batch * heads, 1, -1)
    return torch.bmm(weights, values.reshape(batch * heads, -1, width)).view(batch, heads, 1, width)
