"""POST /v1/tts: speech in the asked format, whole or streamed sentence by sentence."""

from __future__ import annotations

import asyncio
import base64
import io
import zipfile

from fastapi import APIRouter, Response

from api_facade.audio import MEDIA_TYPES, encode
from api_facade.auth.access import TtsTriton
from api_facade.dependencies import SettingsDep
from api_facade.errors import ApiError
from api_facade.metrics import AUDIO_SECONDS
from api_facade.openapi import AUTH, BODY, MODEL, error_responses
from api_facade.protocol import Clip, TtsBatchRequest, TtsBatchResponse, TtsRequest
from api_facade.voice.streams import streamed_speech

router = APIRouter(tags=["tts"])
AUDIO_RESPONSE = {200: {"content": {media: {} for media in MEDIA_TYPES.values()}, "description": "the audio"}}


def check_voice(body: TtsRequest, voices: dict[str, str]) -> None:
    if body.voice not in ("default", voices.get(body.language)):
        raise ApiError(422, "invalid_request", f"voice: no voice {body.voice!r} for {body.language!r}", "voice")


@router.post(
    "/v1/tts/batch",
    response_model=TtsBatchResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "JSON of clips, or a zip of files"},
        **error_responses(AUTH, BODY, MODEL),
    },
)
async def tts_batch(body: TtsBatchRequest, triton: TtsTriton) -> TtsBatchResponse | Response:
    # Sent together, the texts reach Triton's dynamic batcher together and share a forward pass.
    speeches = await asyncio.gather(*(triton.synthesize(t, body.language, body.speed) for t in body.texts))
    clips = []
    for index, (text, speech) in enumerate(zip(body.texts, speeches, strict=True)):
        AUDIO_SECONDS.labels("out").inc(speech.duration)
        clips.append((index, text, speech, encode(speech.audio, speech.sample_rate, body.format)))
    if body.packaging == "zip":
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zipped:
            for index, _text, _speech, data in clips:
                zipped.writestr(f"{index:03d}.{body.format}", data)
        return Response(archive.getvalue(), media_type="application/zip")
    return TtsBatchResponse(
        clips=[
            Clip(
                index=index,
                text=text,
                format=body.format,
                sample_rate=speech.sample_rate,
                duration=round(speech.duration, 3),
                data=base64.b64encode(data).decode(),
            )
            for index, text, speech, data in clips
        ]
    )


@router.post("/v1/tts", responses={**AUDIO_RESPONSE, **error_responses(AUTH, BODY, MODEL)}, response_class=Response)
async def tts(
    body: TtsRequest,
    triton: TtsTriton,
    settings: SettingsDep,
) -> Response:
    check_voice(body, settings.voices)
    media_type = MEDIA_TYPES[body.format]
    if not body.stream:
        speech = await triton.synthesize(body.text, body.language, body.speed)
        AUDIO_SECONDS.labels("out").inc(speech.duration)
        headers = {"X-Sample-Rate": str(speech.sample_rate), "X-Audio-Duration": f"{speech.duration:.3f}"}
        return Response(encode(speech.audio, speech.sample_rate, body.format), media_type=media_type, headers=headers)

    return await streamed_speech(triton, body.text, body.language, body.speed, body.format)
