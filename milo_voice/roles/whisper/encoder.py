"""Whisper's audio encoder in torch, with the weights of the CTranslate2 model it sits beside.

On an H100 the CTranslate2 wheel from PyPI spends 40 of its 70 ms per 30 s window in the
encoder: it is built without flash attention, and the encoder's attention over 1,500 frames
dominates. torch's ``scaled_dot_product_attention`` runs that attention with flash kernels.
This module computes the same encoder output (same layers, same weights, read from the
model's ``model.bin``) for the torch decoder beside it (decoder.py) or for
CTranslate2's ``generate``, which accepts encoder output in place of features.

The weights are read from the one model directory faster-whisper loads, so there is nothing
more to download or convert. They are held twice on the device (here and in CTranslate2),
about 1.3 GB for large-v3-turbo's encoder in float16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from milo_voice.roles.ctranslate2_files import LAYER_NORM_EPSILON, read_model_bin, weight_tensor


class WhisperEncoder:
    """``[batch, n_mels, 3000]`` log-mel features to ``[batch, 1500, d_model]`` encoder states."""

    def __init__(self, weights: dict[str, np.ndarray], device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.device, self.dtype = torch.device(device), dtype
        self.num_heads = int(weights["encoder/num_heads"])
        self._weights = {
            name.removeprefix("encoder/"): weight_tensor(weights, name, self.device, dtype)
            for name in weights
            if name != "encoder/num_heads" and not name.endswith("weight_scale")
        }
        self.num_layers = sum(1 for name in self._weights if name.endswith("/self_attention/linear_0/bias"))

    @classmethod
    def from_model_dir(
        cls, model_dir: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32
    ) -> WhisperEncoder:
        return cls(read_model_bin(Path(model_dir) / "model.bin", prefix="encoder/"), device, dtype)

    @torch.inference_mode()
    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        w = self._weights
        x = features.to(self.device, self.dtype)
        x = functional.gelu(functional.conv1d(x, w["conv1/weight"], w["conv1/bias"], padding=1))
        x = functional.gelu(functional.conv1d(x, w["conv2/weight"], w["conv2/bias"], stride=2, padding=1))
        x = x.transpose(1, 2) + w["position_encodings/encodings"][: x.shape[2]]
        for index in range(self.num_layers):
            x = x + self._attention(x, f"layer_{index}/self_attention/")
            x = x + self._feed_forward(x, f"layer_{index}/ffn/")
        return self._layer_norm(x, "layer_norm/").contiguous()

    def _layer_norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        w = self._weights
        return functional.layer_norm(x, x.shape[-1:], w[name + "gamma"], w[name + "beta"], LAYER_NORM_EPSILON)

    def _attention(self, x: torch.Tensor, name: str) -> torch.Tensor:
        w = self._weights
        batch, frames, width = x.shape
        qkv = functional.linear(self._layer_norm(x, name + "layer_norm/"), w[name + "linear_0/weight"],
                                w[name + "linear_0/bias"])  # fmt: skip
        # [batch, frames, 3 * width] -> 3 x [batch, heads, frames, head width]
        q, k, v = qkv.view(batch, frames, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        attended = functional.scaled_dot_product_attention(q, k, v)
        attended = attended.transpose(1, 2).reshape(batch, frames, width)
        return functional.linear(attended, w[name + "linear_1/weight"], w[name + "linear_1/bias"])

    def _feed_forward(self, x: torch.Tensor, name: str) -> torch.Tensor:
        w = self._weights
        hidden = functional.linear(self._layer_norm(x, name + "layer_norm/"), w[name + "linear_0/weight"],
                                   w[name + "linear_0/bias"])  # fmt: skip
        return functional.linear(functional.gelu(hidden), w[name + "linear_1/weight"], w[name + "linear_1/bias"])
