"""POST /v1/stt: audio as a multipart upload or base64 JSON, in most formats, to text."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from api_facade.auth.access import SttTriton
from api_facade.dependencies import SettingsDep, VadDep
from api_facade.errors import ApiError
from api_facade.openapi import AUTH, BODY, MODEL, error_responses
from api_facade.protocol import SttResponse, SttSegment
from api_facade.subtitles import to_srt, to_vtt
from api_facade.uploads import read_audio_upload, transcribe_upload, upload_request_body

router = APIRouter(tags=["stt"])
LANGUAGES = ("mg", "fr", "auto")
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")

REQUEST_BODY = upload_request_body(
    {
        "language": {"type": "string", "enum": list(LANGUAGES), "default": "auto"},
        "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
    },
    example={"audio": "UklGRiQAAABXQVZFZm10IBAAAAABAAEAgD4AAAB9AAACABAAZGF0YQAAAAA=", "language": "fr"},
)


@router.post(
    "/v1/stt",
    openapi_extra=REQUEST_BODY,
    response_model=SttResponse,
    response_model_exclude_none=True,
    responses=error_responses(AUTH, BODY, MODEL),
)
async def stt(
    request: Request,
    triton: SttTriton,
    settings: SettingsDep,
    vad: VadDep,
) -> Any:
    upload = await read_audio_upload(request, settings)
    audio_bytes, language = upload.audio, upload.fields.get("language", "auto")
    response_format = upload.fields.get("response_format", "json")
    if language not in LANGUAGES:
        raise ApiError(422, "invalid_request", f"language: must be one of {list(LANGUAGES)}", "language")
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(
            422, "invalid_request", f"response_format: must be one of {list(RESPONSE_FORMATS)}", "response_format"
        )
    result = await transcribe_upload(audio_bytes, language, settings, triton, vad)
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
