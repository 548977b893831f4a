"""Speech as an HTTP body that streams: a text spoken sentence by sentence (``/v1/tts``,
``/v1/audio/speech``), and a spoken reply as Server-Sent Events of its text and audio or as its
audio alone (``POST /v1/voice``, ``/v1/chat``'s voice mode). A reply's body stores the turn in
the session once the reply has ended (a reply cut short by a client that left is not stored).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from api_facade.audio import MEDIA_TYPES, encode, streaming_wav_header
from api_facade.conversation import ChatTurn, Conversations
from api_facade.metrics import AUDIO_SECONDS, VOICE_FIRST_AUDIO, ChatTiming
from api_facade.protocol import ChatAudio, VoiceAudio
from api_facade.voice.reply import ReplyAudio, ReplyEnd, ReplyEvent, ReplyText
from api_facade.voice.speech import spoken_text
from client import Speech, TritonPool

log = logging.getLogger("api_facade")


class ClosingStream(StreamingResponse):
    """A streamed body whose ``source`` (a generator with work in flight: a chat, syntheses) is
    closed once the response is over, however it ended. A client that leaves before the body
    started is cancelled before the body ran, so the body's own cleanup never would."""

    def __init__(self, content: AsyncIterator[bytes], source: AsyncIterator[Any], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.source = source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.source.aclose()  # type: ignore[attr-defined]


def sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def encoded_audio(speech: Speech, audio_format: str) -> ChatAudio:
    """``speech`` as a JSON body carries it: a whole file of ``audio_format``, in base64."""
    return ChatAudio(
        format=audio_format,
        sample_rate=speech.sample_rate,
        duration=round(speech.duration, 3),
        data=base64.b64encode(encode(speech.audio, speech.sample_rate, audio_format)).decode(),
    )


def joined_piece(speech: Speech, audio_format: str, first: bool) -> bytes:
    """One piece of a stream of ``audio_format`` that pieces are appended to: a WAV stream is
    one open-ended header, then raw PCM; the other streamable formats join whole files."""
    if audio_format != "wav":
        return encode(speech.audio, speech.sample_rate, audio_format)
    header = streaming_wav_header(speech.sample_rate) if first else b""
    return header + encode(speech.audio, speech.sample_rate, "pcm")


def audio_piece(event: ReplyAudio, audio_format: str) -> VoiceAudio:
    audio = encoded_audio(event.speech, audio_format)
    return VoiceAudio(index=event.index, text=event.text, language=event.language, **audio.model_dump())


class FirstAudio:
    """Observes, once, the time from ``started`` to the first audio sent."""

    def __init__(self, route: str, started: float) -> None:
        self.route, self.started, self.sent = route, started, False

    def __call__(self) -> None:
        if not self.sent:
            self.sent = True
            VOICE_FIRST_AUDIO.labels(self.route).observe(time.perf_counter() - self.started)


async def reply_events(
    reply: AsyncIterator[ReplyEvent],
    turn: ChatTurn,
    conversations: Conversations,
    audio_format: str,
    route: str,
    first_audio: Callable[[], None],
) -> AsyncIterator[bytes]:
    """``token`` events as the text comes, ``audio`` events as each piece is spoken, then ``done``
    (or ``error``: the status line is sent, so the stream reports a failure itself)."""
    try:
        with ChatTiming(route) as timing:
            async for event in reply:
                if isinstance(event, ReplyText):
                    timing.token()
                    yield sse("token", {"text": event.text})
                elif isinstance(event, ReplyAudio):
                    AUDIO_SECONDS.labels("out").inc(event.speech.duration)
                    first_audio()
                    yield sse("audio", audio_piece(event, audio_format).model_dump())
                elif isinstance(event, ReplyEnd):
                    turns = await conversations.answered(turn, event.text)
                    done = {"session_id": turn.session_id, "reply": event.text, "turns": turns}
                    yield sse("done", {**done, "finish_reason": event.finish_reason, "language": event.language})
    except Exception as exc:
        log.warning("%s stream failed: %r", route, exc)
        yield sse("error", {"code": "stream_failed", "message": str(exc)})


async def reply_audio(
    reply: AsyncIterator[ReplyEvent],
    turn: ChatTurn,
    conversations: Conversations,
    audio_format: str,
    route: str,
    first_audio: Callable[[], None],
) -> AsyncIterator[bytes]:
    """The reply's audio alone, piece after piece, as one stream of ``audio_format``. A failure
    after the first byte can only end the stream early: it is logged."""
    try:
        with ChatTiming(route) as timing:
            async for event in reply:
                if isinstance(event, ReplyText):
                    timing.token()
                elif isinstance(event, ReplyAudio):
                    AUDIO_SECONDS.labels("out").inc(event.speech.duration)
                    first_audio()
                    yield joined_piece(event.speech, audio_format, first=event.index == 0)
                elif isinstance(event, ReplyEnd):
                    await conversations.answered(turn, event.text)
    except Exception as exc:
        log.warning("%s audio stream ended early: %r", route, exc)


async def streamed_speech(
    triton: TritonPool, text: str, language: str, speed: float, audio_format: str, sse_events: bool = False
) -> StreamingResponse:
    """``text`` spoken piece by piece (``voice.speech``), each sent as soon as it is synthesised:
    one stream of ``audio_format``, or (``sse_events``) OpenAI's ``speech.audio.delta`` /
    ``speech.audio.done`` events. The first piece is synthesised before the status line, so that
    bad input still gets its error status instead of a broken stream."""
    pieces = spoken_text(triton, text, language, speed)
    first = await anext(pieces, None)

    async def spoken() -> AsyncIterator[Speech]:
        if first is None:
            return
        yield first
        async for speech in pieces:
            yield speech

    async def audio() -> AsyncIterator[bytes]:
        async for speech in spoken():
            AUDIO_SECONDS.labels("out").inc(speech.duration)
            yield joined_piece(speech, audio_format, first=speech is first)

    async def events() -> AsyncIterator[bytes]:
        async for speech in spoken():
            AUDIO_SECONDS.labels("out").inc(speech.duration)
            data = base64.b64encode(encode(speech.audio, speech.sample_rate, audio_format)).decode()
            yield f"data: {json.dumps({'type': 'speech.audio.delta', 'audio': data})}\n\n".encode()
        yield f"data: {json.dumps({'type': 'speech.audio.done'})}\n\n".encode()

    if sse_events:
        return ClosingStream(events(), pieces, media_type="text/event-stream")
    return ClosingStream(audio(), pieces, media_type=MEDIA_TYPES[audio_format])
