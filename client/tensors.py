"""Names, types and shapes of every served model's tensors: the one place they are written.

The PyTriton host binds its models with these specs and the client builds its
requests from them, so the two cannot drift apart. Shapes exclude the batch dimension.

Texts, JSON documents and audio buffers travel as one-element BYTES tensors. Audio
sent to STT is a BYTES tensor too (float32 little-endian PCM, 16 kHz mono): Triton's
dynamic batcher only groups requests whose tensors have the same shape, and a
variable-length FP32 tensor would keep clips of different lengths from ever sharing a
batch. Every non-streaming model answers with an ``error`` tensor, empty on success:
one bad request must not fail the other requests computed in the same batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AUDIO_WIRE_DTYPE = np.dtype("<f4")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: type  # numpy scalar type; np.bytes_ for Triton BYTES
    shape: tuple[int, ...] = (1,)
    optional: bool = False

    @property
    def triton_dtype(self) -> str:
        return {
            np.bytes_: "BYTES",
            np.float32: "FP32",
            np.int32: "INT32",
            np.int64: "INT64",
            np.uint8: "UINT8",
        }[self.dtype]


@dataclass(frozen=True)
class ModelIO:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    streaming: bool = False
    # Only meaningful where every model of the role runs in one process (not in the stock repository).
    shared_process_only: bool = False


def _bytes(name: str, optional: bool = False) -> TensorSpec:
    return TensorSpec(name, np.bytes_, (1,), optional)


def _float(name: str, optional: bool = False) -> TensorSpec:
    return TensorSpec(name, np.float32, (1,), optional)


def _int(name: str, optional: bool = False) -> TensorSpec:
    return TensorSpec(name, np.int32, (1,), optional)


ERROR = _bytes("error")

STT = ModelIO(
    name="stt",
    inputs=(_bytes("audio"), _bytes("language", optional=True)),
    outputs=(
        _bytes("text"),
        _bytes("language"),
        _float("language_probability"),
        _float("confidence"),
        _float("duration"),
        _bytes("segments"),  # JSON list of {start, end, text, avg_logprob, no_speech_prob}
        ERROR,
    ),
)

TTS = ModelIO(
    name="tts",
    inputs=(_bytes("text"), _bytes("language"), _float("speed", optional=True)),
    outputs=(
        # Padded to the longest clip of the batch; ``num_samples`` says where this clip ends.
        TensorSpec("audio", np.float32, (-1,)),
        _int("num_samples"),
        _int("sample_rate"),
        _bytes("spoken_text"),
        ERROR,
    ),
)

TTS_STREAM = ModelIO(
    name="tts_stream",
    # A caller's id for this stream, which ``tts_cancel`` takes to stop it before its next sentence.
    inputs=(*TTS.inputs, _bytes("request_id", optional=True)),
    # One response per sentence; ``audio`` is exactly that sentence's samples.
    outputs=(TensorSpec("audio", np.float32, (-1,)), _int("sample_rate"), _bytes("spoken_text")),
    streaming=True,
)

TRANSLATE = ModelIO(
    name="translate",
    inputs=(_bytes("text"), _bytes("source"), _bytes("target")),
    outputs=(_bytes("translation"), _float("score"), ERROR),
)

CHAT = ModelIO(
    name="chat",
    inputs=(
        _bytes("messages"),  # JSON list of {"role", "content"}
        _bytes("language", optional=True),
        _int("max_tokens", optional=True),
        _float("temperature", optional=True),
        _float("top_p", optional=True),
        TensorSpec("seed", np.int64, (1,), optional=True),  # >= 0; absent: a fresh random seed
        _bytes("stop", optional=True),  # JSON list of up to 4 strings
        # A caller's id for this request, which ``chat_cancel`` takes to stop it early.
        _bytes("request_id", optional=True),
    ),
    outputs=(_bytes("text"), _int("completion_tokens"), _int("prompt_tokens"), _bytes("finish_reason"), ERROR),
)

# One response per piece of text (``finish_reason`` empty), then a last one with the finish reason.
CHAT_STREAM = ModelIO(
    name="chat_stream", inputs=CHAT.inputs, outputs=(_bytes("token"), _bytes("finish_reason")), streaming=True
)

# Stops a running ``chat`` or ``chat_stream`` request by its ``request_id``; ``cancelled`` is 1 when
# one was found. Served where the chat models share one process (the PyTriton host): the stock
# server's Python backend sees a cancelled request itself.
CHAT_CANCEL = ModelIO(
    name="chat_cancel", inputs=(_bytes("request_id"),), outputs=(_int("cancelled"),), shared_process_only=True
)

# Stops a running ``tts_stream`` by its ``request_id`` before its next sentence; served where
# the PyTriton host runs it (which tells its callables nothing of a client gone), as ``chat_cancel``.
TTS_CANCEL = ModelIO(
    name="tts_cancel", inputs=(_bytes("request_id"),), outputs=(_int("cancelled"),), shared_process_only=True
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


def encode_audio(samples: np.ndarray) -> bytes:
    """Mono float samples at 16 kHz to the STT wire format."""
    return np.ascontiguousarray(samples, dtype=AUDIO_WIRE_DTYPE).tobytes()


def decode_audio(buffer: bytes) -> np.ndarray:
    if len(buffer) % AUDIO_WIRE_DTYPE.itemsize:
        raise ValueError("audio buffer length is not a whole number of float32 samples")
    return np.frombuffer(buffer, dtype=AUDIO_WIRE_DTYPE).astype(np.float32)
