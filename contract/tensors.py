"""Names, kinds and shapes of every served model's tensors, and the records they carry.

The PyTriton host binds its models with these specs, the stock server's configs are
written from them, and ``contract.codec`` packs and unpacks every model's records with
them, so no hop can drift from another. Shapes exclude the batch dimension.

Texts, JSON lists and audio buffers travel as one-element BYTES tensors. Audio sent to
STT is a BYTES tensor too (float32 little-endian PCM, 16 kHz mono): Triton's dynamic
batcher only groups requests whose tensors have the same shape, and a variable-length
FP32 tensor would keep clips of different lengths from ever sharing a batch. Every model
that computes answers with an ``error`` tensor, empty on success: a refused request is
answered in place and never fails the other requests computed in the same batch (streams
answer a refusal as their one and only piece).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from contract import records


class Kind(enum.Enum):
    TEXT = "text"  # a UTF-8 string in a one-element BYTES tensor
    LIST = "list"  # a JSON list in a one-element BYTES tensor; ``of`` is its elements' type
    PCM = "pcm"  # float32 little-endian samples in a one-element BYTES tensor
    FLOAT = "float"  # an FP32 scalar
    INT = "int"  # an INT32 scalar
    INT64 = "int64"  # an INT64 scalar
    SAMPLES = "samples"  # a variable-length FP32 vector


_DTYPES: dict[Kind, type] = {
    Kind.TEXT: np.bytes_,
    Kind.LIST: np.bytes_,
    Kind.PCM: np.bytes_,
    Kind.FLOAT: np.float32,
    Kind.INT: np.int32,
    Kind.INT64: np.int64,
    Kind.SAMPLES: np.float32,
}
_TRITON_DTYPES = {np.bytes_: "BYTES", np.float32: "FP32", np.int32: "INT32", np.int64: "INT64"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    kind: Kind
    optional: bool = False
    field: str = ""  # the record's field it carries, when not named as the tensor
    of: type | None = None  # LIST: the elements' type (``str`` or a record)
    # SAMPLES of a batched model: the INT tensor that says where each row's samples end
    # (the rows of a batch are padded to the longest).
    length: str = ""

    @property
    def attribute(self) -> str:
        return self.field or self.name

    @property
    def dtype(self) -> type:
        """numpy scalar type; np.bytes_ for Triton BYTES."""
        return _DTYPES[self.kind]

    @property
    def shape(self) -> tuple[int, ...]:
        return (-1,) if self.kind is Kind.SAMPLES else (1,)

    @property
    def triton_dtype(self) -> str:
        return _TRITON_DTYPES[self.dtype]


@dataclass(frozen=True)
class ModelIO:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    request: type  # the record its inputs carry
    result: type  # the record its outputs carry (one per piece for a stream)
    streaming: bool = False
    # Only meaningful where every model of the role runs in one process (not in the stock repository).
    shared_process_only: bool = False


def _text(name: str, optional: bool = False, field: str = "") -> TensorSpec:
    return TensorSpec(name, Kind.TEXT, optional, field)


def _float(name: str, optional: bool = False) -> TensorSpec:
    return TensorSpec(name, Kind.FLOAT, optional)


def _int(name: str, optional: bool = False) -> TensorSpec:
    return TensorSpec(name, Kind.INT, optional)


ERROR = _text("error")
REQUEST_ID = _text("request_id", optional=True)

STT = ModelIO(
    name="stt",
    inputs=(TensorSpec("audio", Kind.PCM), _text("language", optional=True)),
    outputs=(
        _text("text"),
        _text("language"),
        _float("language_probability"),
        _float("confidence"),
        _float("duration"),
        TensorSpec("segments", Kind.LIST, of=records.Segment),
        _int("tokens"),
        ERROR,
    ),
    request=records.SttRequest,
    result=records.Transcription,
)

_TTS_INPUTS = (_text("text"), _text("language"), _float("speed", optional=True))

TTS = ModelIO(
    name="tts",
    inputs=_TTS_INPUTS,
    outputs=(
        TensorSpec("audio", Kind.SAMPLES, length="num_samples"),
        _int("num_samples"),
        _int("sample_rate"),
        _text("spoken_text"),
        ERROR,
    ),
    request=records.TtsRequest,
    result=records.Speech,
)

TTS_STREAM = ModelIO(
    name="tts_stream",
    # A caller's id for this stream, which ``tts_cancel`` takes to stop it before its next sentence.
    inputs=(*_TTS_INPUTS, REQUEST_ID),
    # One response per sentence; ``audio`` is exactly that sentence's samples.
    outputs=(TensorSpec("audio", Kind.SAMPLES), _int("sample_rate"), _text("spoken_text"), ERROR),
    request=records.TtsRequest,
    result=records.Speech,
    streaming=True,
)

TRANSLATE = ModelIO(
    name="translate",
    inputs=(_text("text"), _text("source"), _text("target")),
    outputs=(_text("translation", field="text"), _float("score"), _text("revision"), ERROR),
    request=records.TranslateRequest,
    result=records.Translation,
)

_CHAT_INPUTS = (
    TensorSpec("messages", Kind.LIST, of=records.ChatMessage),
    _text("language", optional=True),
    _int("max_tokens", optional=True),
    _float("temperature", optional=True),
    _float("top_p", optional=True),
    TensorSpec("seed", Kind.INT64, optional=True),  # >= 0; absent: a fresh random seed
    TensorSpec("stop", Kind.LIST, optional=True, of=str),  # up to 4 strings
    # A caller's id for this request, which ``chat_cancel`` takes to stop it early.
    REQUEST_ID,
)

CHAT = ModelIO(
    name="chat",
    inputs=_CHAT_INPUTS,
    outputs=(
        _text("text"),
        _int("completion_tokens"),
        _int("prompt_tokens"),
        _text("finish_reason"),
        _int("trimmed_messages"),
        _int("cached_tokens"),
        ERROR,
    ),
    request=records.ChatRequest,
    result=records.ChatReply,
)

# One response per piece of text (``finish_reason`` empty), then a last one with the finish reason.
CHAT_STREAM = ModelIO(
    name="chat_stream",
    inputs=_CHAT_INPUTS,
    outputs=(
        _text("token", field="text"),
        _text("finish_reason"),
        _int("prompt_tokens"),
        _int("completion_tokens"),
        _int("cached_tokens"),
        ERROR,
    ),
    request=records.ChatRequest,
    result=records.ChatDelta,
    streaming=True,
)

_CANCEL_INPUTS = (_text("request_id"),)
_CANCEL_OUTPUTS = (_int("cancelled"),)

# Stops a running ``chat`` or ``chat_stream`` request by its ``request_id``; ``cancelled`` is 1 when
# one was found. Served where the chat models share one process (the PyTriton host): the stock
# server's Python backend sees a cancelled request itself.
CHAT_CANCEL = ModelIO(
    name="chat_cancel",
    inputs=_CANCEL_INPUTS,
    outputs=_CANCEL_OUTPUTS,
    request=records.CancelRequest,
    result=records.Cancelled,
    shared_process_only=True,
)

# Stops a running ``tts_stream`` by its ``request_id`` before its next sentence; served where
# the PyTriton host runs it (which tells its callables nothing of a client gone), as ``chat_cancel``.
TTS_CANCEL = ModelIO(
    name="tts_cancel",
    inputs=_CANCEL_INPUTS,
    outputs=_CANCEL_OUTPUTS,
    request=records.CancelRequest,
    result=records.Cancelled,
    shared_process_only=True,
)

MODELS: dict[str, ModelIO] = {
    m.name: m for m in (STT, TTS, TTS_STREAM, TTS_CANCEL, TRANSLATE, CHAT, CHAT_STREAM, CHAT_CANCEL)
}

# Which registry role serves which models (a streaming model shares its role's instances).
ROLE_MODELS: dict[str, tuple[ModelIO, ...]] = {
    "stt": (STT,),
    "tts": (TTS, TTS_STREAM, TTS_CANCEL),
    "translate": (TRANSLATE,),
    "chat": (CHAT, CHAT_STREAM, CHAT_CANCEL),
}
