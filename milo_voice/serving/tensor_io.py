"""Triton tensors in, a role's batch call, Triton tensors out: for any Triton server.

Each served model gets one handler built around one role instance. A batched model's
handler takes the inputs of a whole batch (``[batch, 1]`` arrays) and returns its
outputs; a streaming model's handler takes one request and yields one set of outputs
per piece. The handlers know nothing of the server: the PyTriton host wraps them with
``@batch``, the stock Triton Python backend (``python_backend``) with its own request
objects, and tests call them directly.

A request that fails validation gets its message in the ``error`` tensor while the rest
of its batch is computed normally.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np

from client import tensors
from milo_voice.registry import ModelSpec
from milo_voice.roles.chat import ChatBackend, ChatMessage, ChatRequest, validate
from milo_voice.roles.stt import SpeechToText, SttRequest
from milo_voice.roles.translate import TranslateRequest, Translator
from milo_voice.roles.tts import TextToSpeech, TtsRequest

Request = TypeVar("Request")
Result = TypeVar("Result")
Outputs = dict[str, np.ndarray]
Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class BatchHandler:
    """A batched model: its optional inputs' defaults and the call that computes a batch."""

    compute: Callable[[Inputs], Outputs]
    defaults: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamHandler:
    """A decoupled model: one request in, one set of outputs per piece out.

    ``idle`` is a filler piece (one that clients skip) for a server that answers
    several streams in lockstep and must say something for one that has ended.
    """

    stream: Callable[[Inputs], Iterator[Outputs]]
    idle: Outputs


Handler = BatchHandler | StreamHandler


def with_defaults(request: Inputs, defaults: dict[str, Any]) -> Inputs:
    """``request`` with every missing optional input set to its default, one row per sample."""
    size = len(next(iter(request.values())))
    filled = dict(request)
    for name, value in defaults.items():
        if name not in filled:
            dtype = np.object_ if isinstance(value, bytes) else np.asarray(value).dtype
            filled[name] = np.array([[value]] * size, dtype=dtype)
    return filled


def concatenate(requests: Sequence[Inputs]) -> tuple[Inputs, list[int]]:
    """Several requests' inputs as one batch, and each request's number of rows."""
    sizes = [len(next(iter(r.values()))) for r in requests]
    names = requests[0].keys()
    return {name: np.concatenate([r[name] for r in requests]) for name in names}, sizes


def split(outputs: Outputs, sizes: Sequence[int]) -> list[Outputs]:
    """A batch's outputs cut back into one set per request (the inverse of ``concatenate``)."""
    bounds = np.cumsum([0, *sizes])
    return [{name: value[start:end] for name, value in outputs.items()} for start, end in itertools.pairwise(bounds)]


def text(cell: np.ndarray) -> str:
    value = cell[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _bytes_column(values: Sequence[str | bytes]) -> np.ndarray:
    return np.array([[v.encode("utf-8") if isinstance(v, str) else v] for v in values], dtype=np.object_)


def _float_column(values: Sequence[float]) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.float32)


def _int_column(values: Sequence[int]) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.int32)


def run_valid(
    parse: Callable[[int], Request],
    count: int,
    check: Callable[[Request], None],
    compute: Callable[[list[Request]], list[Result]],
) -> tuple[list[Result | None], list[str]]:
    """Parse and validate each request; compute the valid ones in one batch call."""
    errors = [""] * count
    parsed: dict[int, Request] = {}
    for i in range(count):
        try:
            request = parse(i)
            check(request)
            parsed[i] = request
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            errors[i] = str(exc) or type(exc).__name__
    results: list[Result | None] = [None] * count
    if parsed:
        for i, result in zip(parsed, compute(list(parsed.values())), strict=True):
            results[i] = result
    return results, errors


# -- speech to text ------------------------------------------------------------


def stt_handler(role: SpeechToText) -> BatchHandler:
    def compute(inputs: Inputs) -> Outputs:
        audio, language = inputs["audio"], inputs["language"]
        results, errors = run_valid(
            lambda i: SttRequest(tensors.decode_audio(audio[i][0]), text(language[i])),
            len(audio),
            role.validate,
            role.transcribe_batch,
        )
        return {
            "text": _bytes_column([r.text if r else "" for r in results]),
            "language": _bytes_column([r.language if r else "" for r in results]),
            "language_probability": _float_column([r.language_probability if r else 0.0 for r in results]),
            "confidence": _float_column([r.confidence if r else 0.0 for r in results]),
            "duration": _float_column([r.duration if r else 0.0 for r in results]),
            "segments": _bytes_column([json.dumps([asdict(s) for s in r.segments]) if r else "[]" for r in results]),
            "error": _bytes_column(errors),
        }

    return BatchHandler(compute, {"language": b"auto"})


# -- text to speech ------------------------------------------------------------


def tts_handler(role: TextToSpeech) -> BatchHandler:
    def compute(inputs: Inputs) -> Outputs:
        texts, language, speed = inputs["text"], inputs["language"], inputs["speed"]
        results, errors = run_valid(
            lambda i: TtsRequest(text(texts[i]), text(language[i]), float(speed[i][0])),
            len(texts),
            role.validate,
            role.synthesize_batch,
        )
        # Triton cannot ship a zero-length tensor: a batch of refusals still carries one sample.
        longest = max((r.audio.size for r in results if r), default=0) or 1
        audio = np.zeros((len(results), longest), dtype=np.float32)
        for i, result in enumerate(results):
            if result:
                audio[i, : result.audio.size] = result.audio
        return {
            "audio": audio,
            "num_samples": _int_column([r.audio.size if r else 0 for r in results]),
            "sample_rate": _int_column([r.sample_rate if r else 0 for r in results]),
            "spoken_text": _bytes_column([r.spoken_text if r else "" for r in results]),
            "error": _bytes_column(errors),
        }

    return BatchHandler(compute, {"speed": np.float32(1.0)})


def tts_stream_handler(role: TextToSpeech) -> StreamHandler:
    def stream(request: Inputs) -> Iterator[Outputs]:
        speed = float(request["speed"][0]) if "speed" in request else 1.0
        for speech in role.stream(text(request["text"]), text(request["language"]), speed):
            yield {
                "audio": speech.audio,
                "sample_rate": np.array([speech.sample_rate], dtype=np.int32),
                "spoken_text": np.array([speech.spoken_text.encode("utf-8")], dtype=np.object_),
            }

    # sample_rate 0 marks a filler piece; clients skip it.
    idle = {
        "audio": np.zeros(1, dtype=np.float32),
        "sample_rate": np.array([0], dtype=np.int32),
        "spoken_text": np.array([b""], dtype=np.object_),
    }
    return StreamHandler(stream, idle)


# -- translation -----------------------------------------------------------------


def translate_handler(role: Translator) -> BatchHandler:
    def compute(inputs: Inputs) -> Outputs:
        texts, source, target = inputs["text"], inputs["source"], inputs["target"]
        results, errors = run_valid(
            lambda i: TranslateRequest(text(texts[i]), text(source[i]), text(target[i])),
            len(texts),
            role.validate,
            role.translate_batch,
        )
        return {
            "translation": _bytes_column([r.text if r else "" for r in results]),
            "score": _float_column([r.score if r else 0.0 for r in results]),
            "error": _bytes_column(errors),
        }

    return BatchHandler(compute)


# -- chat ------------------------------------------------------------------------

CHAT_DEFAULTS = {"language": b"", "max_tokens": np.int32(0), "temperature": np.float32(-1.0)}


def parse_chat_request(messages: bytes | str, language: str, max_tokens: int, temperature: float) -> ChatRequest:
    decoded = json.loads(messages)
    if not isinstance(decoded, list) or not all(isinstance(m, dict) for m in decoded):
        raise ValueError('messages must be a JSON list of {"role", "content"} objects')
    return ChatRequest(
        messages=[ChatMessage(str(m.get("role", "")), str(m.get("content", ""))) for m in decoded],
        language=language or None,
        max_tokens=max_tokens,
        temperature=temperature,
    )


def _chat_request_at(inputs: Inputs, i: int, default_max_tokens: int) -> ChatRequest:
    max_tokens = int(inputs["max_tokens"][i][0]) if "max_tokens" in inputs else 0
    temperature = float(inputs["temperature"][i][0]) if "temperature" in inputs else -1.0
    return parse_chat_request(
        inputs["messages"][i][0],
        text(inputs["language"][i]) if "language" in inputs else "",
        max_tokens if max_tokens > 0 else default_max_tokens,
        temperature if temperature >= 0 else 0.7,
    )


def chat_handler(backend: ChatBackend, default_max_tokens: int = 256) -> BatchHandler:
    def compute(inputs: Inputs) -> Outputs:
        results, errors = run_valid(
            lambda i: _chat_request_at(inputs, i, default_max_tokens),
            len(inputs["messages"]),
            validate,
            backend.complete_batch,
        )
        return {
            "text": _bytes_column([r.text if r else "" for r in results]),
            "completion_tokens": _int_column([r.completion_tokens if r else 0 for r in results]),
            "prompt_tokens": _int_column([r.prompt_tokens if r else 0 for r in results]),
            "finish_reason": _bytes_column([r.finish_reason if r else "error" for r in results]),
            "error": _bytes_column(errors),
        }

    return BatchHandler(compute, CHAT_DEFAULTS)


def chat_stream_handler(backend: ChatBackend, default_max_tokens: int = 256) -> StreamHandler:
    def stream(request: Inputs) -> Iterator[Outputs]:
        batched = {name: value[None, ...] for name, value in request.items()}
        for piece in backend.stream(_chat_request_at(batched, 0, default_max_tokens)):
            yield {"token": np.array([piece.encode("utf-8")], dtype=np.object_)}

    return StreamHandler(stream, {"token": np.array([b""], dtype=np.object_)})


# -- which handler serves which model ------------------------------------------------

_FACTORIES: dict[str, Callable[..., Handler]] = {
    "stt": stt_handler,
    "tts": tts_handler,
    "tts_stream": tts_stream_handler,
    "translate": translate_handler,
    "chat": chat_handler,
    "chat_stream": chat_stream_handler,
}


def handler_for(io: tensors.ModelIO, spec: ModelSpec, instance: Any) -> Handler:
    """The handler that serves ``io`` (a role's model or its stream) with one instance of ``spec``."""
    extra = {"default_max_tokens": int(spec.params.get("max_tokens", 256))} if spec.role == "chat" else {}
    return _FACTORIES[io.name](instance, **extra)
