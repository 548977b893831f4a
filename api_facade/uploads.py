"""Audio uploads: read within the size limit, as multipart (field ``file``) or JSON (base64
``audio``), with the request's other fields; decoded, checked and transcribed. Shared by
``/v1/stt``, ``/v1/voice`` and the OpenAI-compatible transcription route."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from api_facade.audio import TooLongAudioError, UndecodableAudioError, decode_upload
from api_facade.errors import ApiError
from api_facade.metrics import AUDIO_SECONDS
from api_facade.settings import Settings
from api_facade.voice.vad import VadModel
from client import Transcription, TritonPool
from contract.records import AUTO, STT_SAMPLE_RATE


@dataclass(frozen=True)
class AudioUpload:
    audio: bytes  # the file as sent
    fields: dict[str, str]  # the other form fields or JSON members, as text


def upload_request_body(fields: dict[str, Any], example: dict[str, Any] | None = None) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads an audio upload with ``fields`` beside it
    (``openapi_extra``: the route reads its body itself, so FastAPI cannot describe it)."""
    json_body: dict[str, Any] = {
        "schema": {
            "type": "object",
            "required": ["audio"],
            "properties": {"audio": {"type": "string", "format": "byte", "description": "base64 of the audio file"}}
            | fields,
        }
    }
    if example:
        json_body["example"] = example
    multipart = {
        "schema": {
            "type": "object",
            "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"}} | fields,
        }
    }
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": multipart, "application/json": json_body}}
    }


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"audio is larger than {limit} bytes", "audio")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)  # refused before reading or decoding anything
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _text_fields(items: dict[str, object], audio_field: str) -> dict[str, str]:
    return {k: str(v) for k, v in items.items() if k != audio_field and isinstance(v, str | int | float | bool)}


async def read_audio_upload(request: Request, settings: Settings) -> AudioUpload:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit = settings.max_upload_body_bytes
    if content_type == "application/json":
        try:
            payload = json.loads(await _read_body(request, limit))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}", "body") from exc
        except RecursionError as exc:  # nested beyond what the parser follows
            raise ApiError(400, "invalid_json", "the body is nested too deeply", "body") from exc
        if not isinstance(payload, dict) or not isinstance(payload.get("audio"), str):
            raise ApiError(422, "invalid_request", "audio: a base64 string is required", "audio")
        try:
            audio = base64.b64decode(payload["audio"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(422, "invalid_request", "audio: not valid base64", "audio") from exc
        return AudioUpload(audio, _text_fields(payload, "audio"))
    if content_type == "multipart/form-data":
        body = await _read_body(request, limit)

        async def replay() -> AsyncIterator[bytes]:
            yield body

        try:
            form = await MultiPartParser(request.headers, replay()).parse()
        except MultiPartException as exc:
            raise ApiError(422, "invalid_request", f"body: {exc.message}", "body") from exc
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "invalid_request", "file: an audio file upload is required", "file")
        return AudioUpload(await upload.read(), _text_fields(dict(form.items()), "file"))
    raise ApiError(415, "unsupported_media", "send multipart/form-data (field 'file') or JSON with base64 'audio'")


async def decode_checked(audio_bytes: bytes, settings: Settings) -> np.ndarray:
    """An uploaded file as 16 kHz mono samples, within the size and duration limits. Decoded in a
    worker thread: the event loop (every other request, /health) does not wait on FFmpeg."""
    if len(audio_bytes) > settings.max_upload_bytes:
        raise _too_large(settings.max_upload_bytes)
    if not audio_bytes:
        raise ApiError(422, "invalid_request", "audio: the file is empty", "audio")
    try:
        samples = await asyncio.to_thread(decode_upload, audio_bytes, STT_SAMPLE_RATE, settings.max_audio_seconds)
    except UndecodableAudioError as exc:
        raise ApiError(415, "unsupported_media", str(exc), "audio") from exc
    except TooLongAudioError as exc:
        message = f"audio is longer than the limit of {settings.max_audio_seconds:g} s ({exc})"
        raise ApiError(413, "payload_too_large", message, "audio") from exc
    if samples.size == 0:
        raise ApiError(422, "invalid_request", "audio: no samples in the file", "audio")
    return samples


async def transcribe_samples(samples: np.ndarray, language: str, triton: TritonPool) -> Transcription:
    result = await triton.transcribe(samples, language)
    AUDIO_SECONDS.labels("in").inc(result.duration)
    return result


async def transcribe_heard(
    samples: np.ndarray, language: str, triton: TritonPool, vad: VadModel
) -> Transcription | None:
    """The transcript of ``samples``, or None when they hold no speech: a recogniser given
    silence may still write something, which must not reach anyone as what was said. The voice
    check runs beside the transcription, so that speech costs no more time."""
    transcribing = asyncio.create_task(transcribe_samples(samples, language, triton))
    try:
        if not await asyncio.to_thread(vad.has_speech, samples):
            return None
        return await transcribing
    finally:
        transcribing.cancel()  # no-op once it is done


async def transcribe_upload(
    audio_bytes: bytes, language: str, settings: Settings, triton: TritonPool, vad: VadModel
) -> Transcription:
    """Checks, decodes and transcribes one uploaded file (``/v1/stt`` and the OpenAI-compatible
    route); audio without speech is an empty transcript."""
    samples = await decode_checked(audio_bytes, settings)
    heard = await transcribe_heard(samples, language, triton, vad)
    if heard is None:
        return Transcription("", "" if language == AUTO else language, 0.0, 0.0, samples.size / STT_SAMPLE_RATE)
    return heard
