"""Reading a CTranslate2 ``model.bin`` without CTranslate2: the weights the torch modules beside
the CTranslate2 models compute with (Whisper's encoder and decoder, NLLB's translator), taken from
the one model directory CTranslate2 loads, so there is nothing more to download or convert."""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np
import torch

# CTranslate2's DataType enum order (include/ctranslate2/types.h): the type ids of model.bin.
# NumPy has no bfloat16: those are read as their 16 bits (uint16, a type CTranslate2 never stores).
_DTYPES: tuple[np.dtype, ...] = (
    np.dtype("float32"), np.dtype("int8"), np.dtype("int16"), np.dtype("int32"), np.dtype("float16"),
    np.dtype("uint16"),
)  # fmt: skip
_SUPPORTED_BINARY_VERSIONS = range(3, 7)
# CTranslate2's layer norms (src/ops/layer_norm.cc default).
LAYER_NORM_EPSILON = 1e-5


class ModelFileError(ValueError):
    """The model.bin cannot be read as the CTranslate2 model asked for."""


def read_model_bin(path: Path, prefix: str = "", expected_spec: str = "WhisperSpec") -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 ``model.bin`` of ``expected_spec`` whose names start with ``prefix``.

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
    if spec != expected_spec:
        raise ModelFileError(f"{path}: a {spec}, not a {expected_spec}")
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
