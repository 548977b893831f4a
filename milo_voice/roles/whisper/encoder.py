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

import mmap
import struct
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

# CTranslate2's DataType enum order (include/ctranslate2/types.h): the type ids of model.bin.
# NumPy has no bfloat16: those are read as their 16 bits (uint16, a type CTranslate2 never stores).
_DTYPES: tuple[np.dtype, ...] = (
    np.dtype("float32"), np.dtype("int8"), np.dtype("int16"), np.dtype("int32"), np.dtype("float16"),
    np.dtype("uint16"),
)  # fmt: skip
_SUPPORTED_BINARY_VERSIONS = range(3, 7)
LAYER_NORM_EPSILON = 1e-5


class ModelFileError(ValueError):
    """The model.bin cannot be read as a CTranslate2 Whisper model."""


def read_model_bin(path: Path, prefix: str = "") -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 ``model.bin`` whose names start with ``prefix``.

    The format (ctranslate2/specs/model_spec.py, ``_serialize``): a version, the spec's name and
    revision, each variable as name, rank, dims, type id, byte count and raw data (views of the
    file's bytes, not copies), then aliases: a name and the variable it stands for.
    """
    with open(path, "rb") as file:  # mapped, not read: only the encoder's pages are touched
        data = memoryview(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))
    position = 0

    def take(fmt: str) -> int:
        nonlocal position
        (value,) = struct.unpack_from(fmt, data, position)
        position += struct.calcsize(fmt)
        return int(value)

    def string() -> str:
        nonlocal position
        length = take("H")  # counts the trailing NUL
        text = bytes(data[position : position + length - 1]).decode("utf-8")
        position += length
        return text

    version = take("I")
    if version not in _SUPPORTED_BINARY_VERSIONS:
        raise ModelFileError(f"{path}: CTranslate2 binary version {version} is not supported")
    spec = string()
    if spec != "WhisperSpec":
        raise ModelFileError(f"{path}: a {spec}, not a Whisper model")
    take("I")  # spec revision
    stored: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = string()
        shape = tuple(take("I") for _ in range(take("B")))
        type_id = take("B")
        size = take("I")
        if type_id >= len(_DTYPES):
            raise ModelFileError(f"{path}: {name} has a type (id {type_id}) this reader does not know")
        stored[name] = np.frombuffer(data[position : position + size], dtype=_DTYPES[type_id]).reshape(shape)
        position += size
    # Variables equal to an earlier one are stored once and named again here (the converter
    # deduplicates, e.g. biases that are all zero).
    if position < len(data):
        for _ in range(take("I")):
            alias = string()
            stored[alias] = stored[string()]
    return {name: value for name, value in stored.items() if name.startswith(prefix)}


def weight_tensor(weights: dict[str, np.ndarray], name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A model.bin variable as a tensor of ``dtype`` on ``device``, int8 dequantised and bfloat16 decoded."""
    value = weights[name]
    scale = weights.get(name.removesuffix("weight") + "weight_scale") if name.endswith("weight") else None
    if value.dtype == np.int8:
        if scale is None:
            raise ModelFileError(f"{name} is int8 without its weight_scale")
        # CTranslate2 stores round(w * scale) per output row.
        value = value.astype(np.float32) / np.asarray(scale, dtype=np.float32).reshape(-1, 1)
    if value.dtype == np.uint16:  # bfloat16 bits
        return torch.from_numpy(value.view(np.int16).copy()).view(torch.bfloat16).to(device, dtype)
    return torch.from_numpy(np.array(value, dtype=np.float32)).to(device, dtype)


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
