"""POST /v1/stt: audio as a multipart upload or base64 JSON, in most formats, to text."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from api_facade.audio import UndecodableAudioError, decode_upload
from api_facade.auth.access import SttTriton
from api_facade.dependencies import SettingsDep
from api_facade.errors import ApiError
from api_facade.metrics import AUDIO_SECONDS
from api_facade.protocol import SttResponse, SttSegment
from api_facade.settings import Settings
from api_facade.subtitles import to_srt, to_vtt
from client import Transcription, TritonPool
from contract.records import STT_SAMPLE_RATE

router = APIRouter(tags=["stt"])
LANGUAGES = ("mg", "fr", "auto")
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")

REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "language": {"type": "string", "enum": list(LANGUAGES), "default": "auto"},
                        "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["audio"],
                    "properties": {
                        "audio": {"type": "string", "format": "byte", "description": "base64 of the audio file"},
                        "language": {"type": "string", "enum": list(LANGUAGES), "default": "auto"},
                        "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
                    },
                },
                "example": {"audio": "UklGRiQAAABXQVZFZm10IBAAAAABAAEAgD4AAAB9AAACABAAZGF0YQAAAAA=", "language": "fr"},
            },
        },
    }
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


async def _audio_and_options(request: Request, settings: Settings) -> tuple[bytes, str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # base64 grows the payload by a third; multipart adds a little framing.
    limit = settings.max_upload_bytes * 4 // 3 + 65536
    if content_type == "application/json":
        try:
            payload = json.loads(await _read_body(request, limit))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(422, "invalid_request", f"body is not valid JSON: {exc}", "body") from exc
        if not isinstance(payload, dict) or not isinstance(payload.get("audio"), str):
            raise ApiError(422, "invalid_request", "audio: a base64 string is required", "audio")
        try:
            audio = base64.b64decode(payload["audio"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(422, "invalid_request", "audio: not valid base64", "audio") from exc
        return audio, str(payload.get("language", "auto")), str(payload.get("response_format", "json"))
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
        audio = await upload.read()
        return audio, str(form.get("language", "auto")), str(form.get("response_format", "json"))
    raise ApiError(415, "unsupported_media", "send multipart/form-data (field 'file') or JSON with base64 'audio'")


async def transcribe_upload(audio_bytes: bytes, language: str, settings: Settings, triton: TritonPool) -> Transcription:
    """Checks, decodes and transcribes one uploaded file (shared with the OpenAI-compatible route)."""
    if len(audio_bytes) > settings.max_upload_bytes:
        raise _too_large(settings.max_upload_bytes)
    if not audio_bytes:
        raise ApiError(422, "invalid_request", "audio: the file is empty", "audio")
    try:
        samples = decode_upload(audio_bytes)
    except UndecodableAudioError as exc:
        raise ApiError(415, "unsupported_media", str(exc), "audio") from exc
    if samples.size == 0:
        raise ApiError(422, "invalid_request", "audio: no samples in the file", "audio")
    if samples.size / STT_SAMPLE_RATE > settings.max_audio_seconds:
        raise ApiError(413, "payload_too_large", f"audio is longer than {settings.max_audio_seconds} s", "audio")
    result = await triton.transcribe(samples, language)
    AUDIO_SECONDS.labels("in").inc(result.duration)
    return result


@router.post("/v1/stt", openapi_extra=REQUEST_BODY, response_model=SttResponse, response_model_exclude_none=True)
async def stt(
    request: Request,
    triton: SttTriton,
    settings: SettingsDep,
) -> Any:
    audio_bytes, language, response_format = await _audio_and_options(request, settings)
    if language not in LANGUAGES:
        raise ApiError(422, "invalid_request", f"language: must be one of {list(LANGUAGES)}", "language")
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(
            422, "invalid_request", f"response_format: must be one of {list(RESPONSE_FORMATS)}", "response_format"
        )
    result = await transcribe_upload(audio_bytes, language, settings, triton)
    if response_format == "text":
        return PlainTextResponse(result.text)
    if response_format == "srt":
        return Response(to_srt(result.segments), media_type="application/x-subrip")
    if response_format == "vtt":
        return Response(to_vtt(result.segments), media_type="text/vtt")
    segments = [SttSegment(start=s.start, end=s.end, text=s.text) for s in result.segments]
    return SttResponse(
        text=result.text,
        language=result.language,
        language_probability=result.language_probability,
        confidence=result.confidence,
        duration=result.duration,
        segments=segments if response_format == "verbose_json" else None,
    )
