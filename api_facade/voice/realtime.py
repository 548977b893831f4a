"""A live spoken conversation: audio in as it is spoken, turns found by voice activity,
replies spoken back as they are written, and a reply cut short when the user speaks over it.

Transport-free: the WebSocket route feeds it frames (``audio``, ``event``) and gives it a
``send`` for the server's events (``api_facade.realtime_protocol``). One turn at a time: a new
turn (or ``response.cancel``) cancels the reply in flight, which cancels its chat on the model
server and its syntheses, and frees the slot.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from pydantic import ValidationError

from api_facade.conversation import Conversations
from api_facade.errors import MAPPED, ApiError, as_api_error
from api_facade.metrics import AUDIO_SECONDS, VOICE_FIRST_AUDIO
from api_facade.realtime_protocol import (
    CLIENT_EVENT,
    AudioAppend,
    AudioClear,
    AudioCommit,
    ResponseCancel,
    ServerVad,
    SessionConfig,
    SessionUpdate,
)
from api_facade.settings import Settings
from api_facade.uploads import transcribe_samples
from api_facade.voice.reply import ReplyAudio, ReplyEnd, ReplyText, Voice, spoken_reply
from api_facade.voice.vad import SpeechStarted, SpeechStopped, TurnDetection, TurnDetector, VadModel
from client import TritonPool
from contract.records import STT_SAMPLE_RATE

log = logging.getLogger("api_facade")
ROUTE = "/v1/realtime"
PARTIAL_PRIORITY = 2  # the registry's lowest level
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _event_id() -> str:
    return f"event_{uuid.uuid4().hex[:16]}"


class RealtimeConversation:
    def __init__(
        self,
        triton: TritonPool,
        conversations: Conversations,
        vad: VadModel,
        settings: Settings,
        send: Send,
        allow_response: Callable[[], Awaitable[ApiError | None]],
    ) -> None:
        self.triton = triton
        self.conversations = conversations
        self.vad_model = vad
        self.settings = settings
        self._send = send
        self._send_lock = asyncio.Lock()
        self.allow_response = allow_response
        # Partial transcripts only when a session asks for them: on a busy recogniser the one still
        # running when the turn ends holds up the final transcript (docs/benchmarks.md, "Spoken turn").
        self.config = SessionConfig(session_id=uuid.uuid4().hex, language="auto", partial_transcripts=False, speed=1.0)
        self._detector_for(self.config.turn_detection)
        self.samples_in = 0  # stream position, in samples
        self._prefix = np.zeros(0, np.float32)  # audio before the speech started, kept for padding
        self._heard_speech = False  # push to talk: whether the turn so far holds speech
        self._turn: list[np.ndarray] = []  # the turn's audio so far
        self._turn_samples = 0
        self._partial_at = 0  # turn samples when the last partial transcript was asked
        self._partial: asyncio.Task[None] | None = None
        self._response: asyncio.Task[None] | None = None
        self._responding: str | None = None  # the id of the response created and not yet done
        self._turns = 0

    @property
    def busy(self) -> bool:
        """Whether the server is still working on a turn (transcribing or answering it)."""
        return self._response is not None and not self._response.done()

    # -- the client's frames -------------------------------------------------------------------

    async def start(self) -> None:
        await self.send("session.created", session=self._session_view())

    async def audio(self, pcm16: bytes) -> None:
        """Raw 16 kHz mono PCM16 audio, as it is spoken."""
        if len(pcm16) % 2:
            await self.error("invalid_audio", "audio frames are PCM16: an even number of bytes")
            return
        samples = np.frombuffer(pcm16, "<i2").astype(np.float32) / 32768.0
        self.samples_in += len(samples)
        # Voice activity runs on every frame: it ends turns under server detection, and in push
        # to talk it says whether a committed turn holds any speech at all.
        events = self.detector.feed(self.vad(samples))
        if self.config.turn_detection is None:  # the client ends turns itself
            self._heard_speech = self._heard_speech or any(isinstance(e, SpeechStarted) for e in events)
            await self._keep(samples)
            return
        if not events and not self.detector.speaking:
            self._pad(samples)
            return
        for event in events:
            if isinstance(event, SpeechStarted):
                await self._speech_started(event)
        await self._keep(samples)  # a chunk with speech in it belongs to the turn
        for event in events:
            if isinstance(event, SpeechStopped):
                await self.send("input_audio_buffer.speech_stopped", audio_end_ms=event.at_ms)
                await self._end_turn()

    async def event(self, text: str) -> None:
        """A JSON event; one that cannot be read gets an error event, and the conversation goes on."""
        try:
            event = CLIENT_EVENT.validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ())) or "event"
            await self.error("invalid_event", f"{where}: {first.get('msg', 'invalid')}")
            return
        if isinstance(event, AudioAppend):
            try:
                pcm = base64.b64decode(event.audio, validate=True)
            except (binascii.Error, ValueError):
                await self.error("invalid_audio", "audio: not valid base64", event.event_id)
                return
            await self.audio(pcm)
        elif isinstance(event, SessionUpdate):
            await self._update(event.session)
        elif isinstance(event, AudioCommit):
            if not self._turn_samples:
                await self.error("input_audio_buffer_commit_empty", "no audio to commit", event.event_id)
                return
            await self._end_turn()
        elif isinstance(event, AudioClear):
            self._clear_turn()
            await self.send("input_audio_buffer.cleared")
        elif isinstance(event, ResponseCancel):
            await self.cancel_response()

    async def close(self) -> None:
        """The client left or the session ended: stop everything still running."""
        await self.cancel_response(announce=False)
        await self._stop_partial()

    async def _stop_partial(self) -> None:
        task, self._partial = self._partial, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- turns ---------------------------------------------------------------------------------

    def _detector_for(self, settings: ServerVad | None) -> None:
        settings = settings or ServerVad()
        detection = TurnDetection(settings.threshold, settings.silence_duration_ms, settings.prefix_padding_ms)
        self.detector = TurnDetector(detection)
        self.vad = self.vad_model.stream()

    async def _update(self, changes: SessionConfig) -> None:
        values = {name: getattr(changes, name) for name in changes.model_fields_set}
        self.config = self.config.model_copy(update=values)
        if "turn_detection" in values:
            self._detector_for(self.config.turn_detection)
            self._clear_turn()
        await self.send("session.updated", session=self._session_view())

    def _session_view(self) -> dict[str, Any]:
        return {
            **self.config.model_dump(),
            "input_audio_format": "pcm16",
            "input_sample_rate": STT_SAMPLE_RATE,
            "output_audio_format": "pcm16",
        }

    def _pad(self, samples: np.ndarray) -> None:
        detection = self.config.turn_detection
        keep = detection.prefix_padding_ms * STT_SAMPLE_RATE // 1000 if detection else 0
        self._prefix = np.concatenate([self._prefix, samples])[-keep:] if keep else self._prefix[:0]

    async def _speech_started(self, event: SpeechStarted) -> None:
        await self.send("input_audio_buffer.speech_started", audio_start_ms=event.at_ms)
        # Barge-in: the user speaks over the reply, which stops at once.
        await self.cancel_response()
        self._clear_turn()
        if len(self._prefix):
            self._turn.append(self._prefix)
            self._turn_samples = len(self._prefix)
        self._prefix = self._prefix[:0]

    async def _keep(self, samples: np.ndarray) -> None:
        self._turn.append(samples)
        self._turn_samples += len(samples)
        if self._turn_samples >= self.settings.realtime_max_turn_s * STT_SAMPLE_RATE:
            await self._end_turn()  # a turn has a bounded length, like an upload
            return
        interval = self.settings.realtime_partial_interval_s * STT_SAMPLE_RATE
        partial_due = self._turn_samples - self._partial_at >= interval
        if self.config.partial_transcripts and interval > 0 and partial_due and self._partial is None:
            self._partial_at = self._turn_samples
            self._partial = asyncio.create_task(self._transcribe_partial(np.concatenate(self._turn), self._turns))

    def _clear_turn(self) -> None:
        self._turn, self._turn_samples, self._partial_at = [], 0, 0
        self._heard_speech = self.detector.speaking

    async def _transcribe_partial(self, audio: np.ndarray, turn: int) -> None:
        try:
            # The lowest priority: a final transcript waiting in the same queue goes first.
            heard = await self.triton.transcribe(audio, self._language() or "auto", priority=PARTIAL_PRIORITY)
            if turn == self._turns and heard.text.strip():  # still the same turn
                await self.send("conversation.item.input_audio_transcription.partial", transcript=heard.text)
        except Exception as exc:  # a partial is a courtesy: the final transcript reports failures
            log.info("partial transcript failed: %r", exc)
        finally:
            if self._partial is asyncio.current_task():
                self._partial = None

    async def _end_turn(self) -> None:
        audio = np.concatenate(self._turn) if self._turn else np.zeros(0, np.float32)
        heard_speech = self._heard_speech or self.config.turn_detection is not None
        self._clear_turn()
        await self._stop_partial()  # stale now, and it would hold up the final transcript
        self._turns += 1
        self.detector.speaking = False
        await self.send("input_audio_buffer.committed", item_id=f"item_{self._turns}")
        await self.cancel_response()
        ended = asyncio.get_running_loop().time()
        self._response = asyncio.create_task(self._answer(audio, heard_speech, f"item_{self._turns}", ended))

    def _language(self) -> str | None:
        return None if self.config.language in (None, "auto") else self.config.language

    async def _answer(self, audio: np.ndarray, heard_speech: bool, item_id: str, ended: float) -> None:
        """The turn transcribed, then answered aloud. Failures become error events."""
        response_id = f"resp_{uuid.uuid4().hex[:16]}"
        done: dict[str, Any] = {"id": response_id, "status": "failed"}
        try:
            # A turn the client committed itself may hold no speech: never transcribed, never answered.
            if not heard_speech:
                await self.send("conversation.item.input_audio_transcription.completed", item_id=item_id, transcript="")
                return
            heard = await transcribe_samples(audio, self._language() or "auto", self.triton)
            await self.send(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id, transcript=heard.text, language=heard.language,
            )  # fmt: skip
            if not heard.text.strip():
                return  # nothing was said: nothing to answer
            refused = await self.allow_response()
            if refused is not None:
                await self.error(refused.code, refused.message)
                return
            asked = self._language()
            config = self.config
            turn = await self.conversations.turn(
                config.session_id, heard.text, asked or heard.language, config.max_response_output_tokens,
                config.temperature,
            )  # fmt: skip
            voice = Voice(asked, heard.language, self.settings.voice_default_language, self.config.speed or 1.0)
            await self.send("response.created", response={"id": response_id, "status": "in_progress"})
            self._responding = response_id
            first_audio = True
            reply = spoken_reply(self.triton, turn.request, voice, self.conversations.model(None))
            try:
                async for event in reply:
                    if isinstance(event, ReplyText):
                        await self.send("response.audio_transcript.delta", response_id=response_id, delta=event.text)
                    elif isinstance(event, ReplyAudio):
                        if first_audio:
                            first_audio = False
                            VOICE_FIRST_AUDIO.labels(ROUTE).observe(asyncio.get_running_loop().time() - ended)
                        await self._send_audio(response_id, event)
                    elif isinstance(event, ReplyEnd):
                        await self.conversations.answered(turn, event.text)
                        done.update(status="completed", output_text=event.text, language=event.language)
                        done["finish_reason"] = event.finish_reason
            finally:
                await reply.aclose()  # type: ignore[attr-defined]
        except MAPPED as exc:
            error = as_api_error(exc)
            await self.error(error.code, error.message)
        except Exception as exc:
            log.exception("realtime response %s failed", response_id)
            await self.error("internal_error", f"the response failed: {type(exc).__name__}")
        if self._responding == response_id:  # not cancelled (cancel_response reports that)
            self._responding = None
            await self.send("response.audio.done", response_id=response_id)
            await self.send("response.done", response=done)

    async def _send_audio(self, response_id: str, event: ReplyAudio) -> None:
        speech = event.speech
        AUDIO_SECONDS.labels("out").inc(speech.duration)
        pcm = (np.clip(speech.audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        await self.send(
            "response.audio.delta",
            response_id=response_id, index=event.index, sample_rate=speech.sample_rate, text=event.text,
            delta=base64.b64encode(pcm).decode(),
        )  # fmt: skip

    async def cancel_response(self, announce: bool = True) -> None:
        task, self._response = self._response, None
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        cancelled, self._responding = self._responding, None
        if announce and cancelled:
            await self.send("response.done", response={"id": cancelled, "status": "cancelled"})

    # -- the server's events -------------------------------------------------------------------

    async def send(self, type_: str, **fields: Any) -> None:
        async with self._send_lock:
            await self._send({"type": type_, "event_id": _event_id(), **fields})

    async def error(self, code: str, message: str, event_id: str | None = None) -> None:
        error: dict[str, Any] = {"type": "invalid_request_error", "code": code, "message": message}
        if event_id:
            error["event_id"] = event_id
        await self.send("error", error=error)
