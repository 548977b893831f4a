"""Inference callables: Triton tensors in, a role's batch call, Triton tensors out.

Each factory takes one instance of a role class and returns the callable that PyTriton
binds for it. The callables only translate between tensors and the roles' request and
result types; the roles do the work. A request that fails validation gets its message
in the ``error`` tensor while the rest of its batch is computed normally.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

import numpy as np
import wrapt
from pytriton.decorators import batch

from client import tensors
from milo_voice.roles.chat import ChatBackend, ChatMessage, ChatRequest
from milo_voice.roles.stt import SpeechToText, SttRequest
from milo_voice.roles.translate import TranslateRequest, Translator
from milo_voice.roles.tts import TextToSpeech, TtsRequest

Request = TypeVar("Request")
Result = TypeVar("Result")
Outputs = dict[str, np.ndarray]


def fill_missing(**defaults: Any) -> Callable[..., Any]:
    """Give each request its optional inputs' defaults, so that ``@batch`` sees one set of keys."""

    @wrapt.decorator
    def wrapper(wrapped: Callable[..., Any], _instance: Any, args: Any, kwargs: Any) -> Any:
        (requests,) = args
        for request in requests:
            size = len(next(iter(request.values())))
            for name, value in defaults.items():
                if name not in request:
                    dtype = np.object_ if isinstance(value, bytes) else np.asarray(value).dtype
                    request[name] = np.array([[value]] * size, dtype=dtype)
        return wrapped(requests, **kwargs)

    return wrapper


def _text(cell: np.ndarray) -> str:
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
    validate: Callable[[Request], None],
    compute: Callable[[list[Request]], list[Result]],
) -> tuple[list[Result | None], list[str]]:
    """Parse and validate each request; compute the valid ones in one batch call."""
    errors = [""] * count
    parsed: dict[int, Request] = {}
    for i in range(count):
        try:
            request = parse(i)
            validate(request)
            parsed[i] = request
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            errors[i] = str(exc) or type(exc).__name__
    results: list[Result | None] = [None] * count
    if parsed:
        for i, result in zip(parsed, compute(list(parsed.values())), strict=True):
            results[i] = result
    return results, errors


# -- speech to text ------------------------------------------------------------


def stt_infer(role: SpeechToText) -> Callable[..., Any]:
    @fill_missing(language=b"auto")
    @batch
    def infer(audio: np.ndarray, language: np.ndarray) -> Outputs:
        results, errors = run_valid(
            lambda i: SttRequest(tensors.decode_audio(audio[i][0]), _text(language[i])),
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

    return infer


# -- text to speech ------------------------------------------------------------


def tts_infer(role: TextToSpeech) -> Callable[..., Any]:
    @fill_missing(speed=np.float32(1.0))
    @batch
    def infer(text: np.ndarray, language: np.ndarray, speed: np.ndarray) -> Outputs:
        results, errors = run_valid(
            lambda i: TtsRequest(_text(text[i]), _text(language[i]), float(speed[i][0])),
            len(text),
            role.validate,
            role.synthesize_batch,
        )
        # PyTriton cannot ship a zero-length tensor: a batch of refusals still carries one sample.
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

    return infer


def tts_stream_infer(role: TextToSpeech) -> Callable[..., Any]:
    def stream_one(request: dict[str, np.ndarray]) -> Iterator[Outputs]:
        speed = float(request["speed"][0]) if "speed" in request else 1.0
        for speech in role.stream(_text(request["text"]), _text(request["language"]), speed):
            yield {
                "audio": speech.audio,
                "sample_rate": np.array([speech.sample_rate], dtype=np.int32),
                "spoken_text": np.array([speech.spoken_text.encode("utf-8")], dtype=np.object_),
            }

    # sample_rate 0 marks a filler piece (see _interleaved_streams); clients skip it.
    silence = {
        "audio": np.zeros(1, dtype=np.float32),
        "sample_rate": np.array([0], dtype=np.int32),
        "spoken_text": np.array([b""], dtype=np.object_),
    }
    return _interleaved_streams(stream_one, silence)


# -- translation -----------------------------------------------------------------


def translate_infer(role: Translator) -> Callable[..., Any]:
    @batch
    def infer(text: np.ndarray, source: np.ndarray, target: np.ndarray) -> Outputs:
        results, errors = run_valid(
            lambda i: TranslateRequest(_text(text[i]), _text(source[i]), _text(target[i])),
            len(text),
            role.validate,
            role.translate_batch,
        )
        return {
            "translation": _bytes_column([r.text if r else "" for r in results]),
            "score": _float_column([r.score if r else 0.0 for r in results]),
            "error": _bytes_column(errors),
        }

    return infer


# -- chat ------------------------------------------------------------------------


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


def _chat_request_at(inputs: dict[str, np.ndarray], i: int, default_max_tokens: int) -> ChatRequest:
    max_tokens = int(inputs["max_tokens"][i][0]) if "max_tokens" in inputs else 0
    temperature = float(inputs["temperature"][i][0]) if "temperature" in inputs else -1.0
    return parse_chat_request(
        inputs["messages"][i][0],
        _text(inputs["language"][i]) if "language" in inputs else "",
        max_tokens if max_tokens > 0 else default_max_tokens,
        temperature if temperature >= 0 else 0.7,
    )


def chat_infer(backend: ChatBackend, default_max_tokens: int = 256) -> Callable[..., Any]:
    from milo_voice.roles.chat import validate

    @fill_missing(language=b"", max_tokens=np.int32(0), temperature=np.float32(-1.0))
    @batch
    def infer(**inputs: np.ndarray) -> Outputs:
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

    return infer


def chat_stream_infer(backend: ChatBackend, default_max_tokens: int = 256) -> Callable[..., Any]:
    def stream_one(request: dict[str, np.ndarray]) -> Iterator[Outputs]:
        batched = {name: value[None, ...] for name, value in request.items()}
        for piece in backend.stream(_chat_request_at(batched, 0, default_max_tokens)):
            yield {"token": np.array([piece.encode("utf-8")], dtype=np.object_)}

    return _interleaved_streams(stream_one, {"token": np.array([b""], dtype=np.object_)})


def _interleaved_streams(
    stream_one: Callable[[dict[str, np.ndarray]], Iterator[Outputs]], idle: Outputs
) -> Callable[..., Any]:
    """A decoupled callable: each yield answers every request of the call at once.

    Triton usually hands a decoupled model one request at a time; when it hands
    several, a request whose stream has ended answers ``idle`` (filler) pieces until
    the others end, which clients skip.

    PyTriton runs callables on one event-loop thread per model and interleaves
    concurrent calls there. Each step of a stream runs in a worker thread, so the loop
    never blocks; and the streams of one instance take turns at an asyncio gate, because
    a stream waiting for the instance (llama.cpp decodes one conversation at a time)
    inside a worker thread would hold that thread: enough of them fill the loop's small
    pool, and the stream that holds the instance can no longer go on.
    """
    gate = asyncio.Lock()

    async def infer(requests: list[dict[str, np.ndarray]]) -> AsyncIterator[list[Outputs]]:
        async with gate:
            streams = [stream_one(r) for r in requests]
            try:
                while True:
                    pieces = [await asyncio.to_thread(next, stream, None) for stream in streams]
                    if all(piece is None for piece in pieces):
                        return
                    yield [piece if piece is not None else idle for piece in pieces]
            finally:
                # Also on cancellation (client gone): closing releases the role instance.
                for stream in streams:
                    await asyncio.to_thread(stream.close)

    return infer
