"""What streams, streams: every streaming route of the facade read by real network clients
(httpx, the OpenAI SDK, ``websockets``) from a real uvicorn server, with the arrival time of
each chunk. TestClient buffers a whole response, so it could not show any of this.

"Streams" means: the first chunk arrives while the server is still producing later ones, so
the last chunk arrives well after the first.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import websockets

from api_facade.voice.speech import text_pieces
from tests.conftest import TritonHost, facade_process, speak
from tests.integration.test_chat_serving import engine, wait_until

pytestmark = pytest.mark.integration

FIVE_SENTENCES = (
    "Bonjour à tous. Je m'appelle Milo. Je suis un assistant vocal. "
    "Je parle le français et le malgache. Au revoir et à bientôt."
)
QUESTION = "Bonjour, quelle est la capitale de Madagascar ?"
# Answered (greedily) in several sentences by the embedded chat model.
STORY = "Raconte-moi une histoire sur Madagascar."


@pytest.fixture(scope="module")
def facade(triton_host: TritonHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with facade_process(triton_host, tmp_path_factory.mktemp("facade") / "facade.log") as url:
        yield url


@dataclass
class Arrivals:
    """Each chunk of a response body and when it arrived (seconds after the request was sent)."""

    chunks: list[tuple[float, bytes]]

    @property
    def spread(self) -> float:
        return self.chunks[-1][0] - self.chunks[0][0]

    def body(self) -> bytes:
        return b"".join(chunk for _, chunk in self.chunks)


def timed_stream(method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, Arrivals]:
    started = time.perf_counter()
    chunks: list[tuple[float, bytes]] = []
    with httpx.stream(method, url, timeout=120, **kwargs) as response:
        for chunk in response.iter_raw():
            chunks.append((time.perf_counter() - started, chunk))
    return response, Arrivals(chunks)


def sse_events(arrivals: Arrivals) -> list[tuple[float, str, dict[str, Any]]]:
    """(arrival, event, data) of each Server-Sent Event, timed by the chunk that completed it."""
    events, buffer = [], ""
    for at, chunk in arrivals.chunks:
        buffer += chunk.decode()
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if "data" in fields and fields["data"] != "[DONE]":
                events.append((at, fields.get("event", "message"), json.loads(fields["data"])))
    return events


def wav_of(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, 16000, format="WAV")
    return buffer.getvalue()


def test_tts_streams_each_sentence_as_it_is_synthesised(facade: str) -> None:
    # The Malagasy voice (VITS): its pieces take long enough to show each arriving before the next
    # is made, where Pico's French says all five in about 0.1 s.
    body = {"text": FIVE_SENTENCES, "language": "mg", "stream": True, "format": "wav"}
    response, arrivals = timed_stream("POST", f"{facade}/v1/tts", json=body)
    assert response.status_code == 200
    audio, rate = sf.read(io.BytesIO(arrivals.body()), dtype="float32")
    assert len(audio) / rate > 2.0
    assert len(arrivals.chunks) >= len(text_pieces(FIVE_SENTENCES)) == 4  # a piece as each is ready
    assert arrivals.spread > 0.1 and arrivals.chunks[0][0] < arrivals.chunks[-1][0] / 2


def test_the_openai_sdks_streaming_speech_gets_the_first_sentence_first(facade: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{facade}/v1", api_key="unused")
    started, arrivals = time.perf_counter(), []
    with client.audio.speech.with_streaming_response.create(
        model="milo-tts", voice="mg", input=FIVE_SENTENCES, response_format="mp3"
    ) as response:
        for chunk in response.iter_bytes():
            arrivals.append((time.perf_counter() - started, chunk))
    assert len(arrivals) >= len(text_pieces(FIVE_SENTENCES)) and arrivals[-1][0] - arrivals[0][0] > 0.1
    assert arrivals[0][0] < arrivals[-1][0] / 2
    decoded, _ = sf.read(io.BytesIO(b"".join(chunk for _, chunk in arrivals)), dtype="float32")
    assert len(decoded) > 0


def test_chat_events_stream_token_by_token(facade: str) -> None:
    body = {"message": "Tell me about Madagascar.", "stream": True, "max_tokens": 40, "temperature": 0.0}
    _response, arrivals = timed_stream("POST", f"{facade}/v1/chat", json=body)
    events = sse_events(arrivals)
    tokens = [at for at, kind, _ in events if kind == "token"]
    # Paced streams join the tokens of each interval into one event: how many events depends on
    # how fast the machine writes, that they are spread over the generation does not.
    assert len(tokens) >= 5 and events[-1][1] == "done"
    assert tokens[-1] - tokens[0] > 0.2  # the tokens came as they were generated


def test_completions_stream_and_say_length_when_max_tokens_cut_the_reply(facade: str) -> None:
    # Greedy: a sampled reply may end by itself before 24 tokens (a fresh-clone run saw it once).
    body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "stream": True, "max_tokens": 24,
            "temperature": 0}  # fmt: skip
    _response, arrivals = timed_stream("POST", f"{facade}/v1/chat/completions", json=body)
    chunks = [data for _, _, data in sse_events(arrivals)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    contents = [at for at, _, data in sse_events(arrivals) if data["choices"][0]["delta"].get("content")]
    assert len(contents) > 5 and contents[-1] - contents[0] > 0.1


def test_a_spoken_question_is_answered_in_audio_that_streams_as_it_is_spoken(facade: str) -> None:
    files = {"file": ("question.wav", wav_of(speak(STORY)), "audio/wav")}
    fields = {"output": "events", "temperature": "0", "max_tokens": "80"}
    response, arrivals = timed_stream("POST", f"{facade}/v1/voice", files=files, data=fields)
    assert response.status_code == 200
    events = sse_events(arrivals)
    kinds = [kind for _, kind, _ in events]
    assert kinds[:2] == ["session", "transcript"] and kinds[-1] == "done"
    transcript = events[1][2]
    assert "histoire" in transcript["text"].lower() and transcript["language"] == "fr"
    audio = [(at, data) for at, kind, data in events if kind == "audio"]
    tokens = [at for at, kind, _ in events if kind == "token"]
    assert len(audio) > 1 and [data["index"] for _, data in audio] == list(range(len(audio)))
    # The reply was spoken while it was still being written: the first audio came before the
    # last token, not after the whole reply.
    assert audio[0][0] < tokens[-1]
    done = events[-1][2]
    spoken = " ".join(data["text"] for _, data in audio)
    assert spoken.split() == done["reply"].split()
    assert done["turns"] == 2 and done["language"] == audio[0][1]["language"]
    stored = httpx.get(f"{facade}/v1/chat/sessions/{done['session_id']}", timeout=30).json()
    assert [turn["content"] for turn in stored["turns"]] == [transcript["text"], done["reply"]]


def test_the_audio_answer_is_one_wav_stream_with_the_transcript_in_its_headers(facade: str) -> None:
    files = {"file": ("question.wav", wav_of(speak(QUESTION)), "audio/wav")}
    fields = {"temperature": "0", "max_tokens": "60"}
    response, arrivals = timed_stream("POST", f"{facade}/v1/voice", files=files, data=fields)
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    assert "capitale" in httpx.URL("/?q=" + response.headers["x-transcript"]).params["q"].lower()
    body = arrivals.body()
    assert body[:4] == b"RIFF"
    samples = np.frombuffer(body[44:], "<i2")
    assert len(samples) > 16000 * 0.5
    session = response.headers["x-session-id"]
    assert len(httpx.get(f"{facade}/v1/chat/sessions/{session}", timeout=30).json()["turns"]) == 2


def test_a_spoken_question_that_cannot_be_answered_gets_a_clear_error(facade: str) -> None:
    silence = {"file": ("silence.wav", wav_of(np.zeros(16000, np.float32)), "audio/wav")}
    response = httpx.post(f"{facade}/v1/voice", files=silence, timeout=60)
    assert response.status_code == 422 and response.json()["error"]["code"] == "no_speech"
    garbage = {"file": ("noise.wav", b"not audio at all", "audio/wav")}
    assert httpx.post(f"{facade}/v1/voice", files=garbage, timeout=60).status_code == 415
    wrong = httpx.post(f"{facade}/v1/voice", json={"audio": base64.b64encode(b"x").decode(), "output": "video"})
    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "output"


# -- WebSocket /v1/realtime ------------------------------------------------------------------------


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


class Realtime:
    """A realtime client: sends audio in 40 ms frames, keeps every event with its arrival time."""

    def __init__(self, connection: websockets.ClientConnection) -> None:
        self.connection = connection
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.started = time.perf_counter()

    async def send_audio(self, audio: np.ndarray, pace: float = 0.0) -> None:
        frame = 640  # 40 ms
        data = pcm16(audio)
        for i in range(0, len(data), frame * 2):
            await self.connection.send(data[i : i + frame * 2])
            if pace:
                await asyncio.sleep(pace)

    async def until(self, kind: str, timeout: float = 90, **match: Any) -> dict[str, Any]:
        """Reads events up to the first of type ``kind`` (whose fields equal ``match``)."""
        async with asyncio.timeout(timeout):
            while True:
                event = json.loads(await self.connection.recv())
                self.events.append((time.perf_counter() - self.started, event))
                if event["type"] == kind and all(event.get(k) == v for k, v in match.items()):
                    return event

    def kinds(self) -> list[str]:
        return [event["type"] for _, event in self.events]


def realtime_url(facade: str) -> str:
    return facade.replace("http://", "ws://") + "/v1/realtime"


def test_a_live_turn_is_found_by_voice_activity_and_answered_aloud(facade: str, triton_host: TritonHost) -> None:
    async def run() -> Realtime:
        async with websockets.connect(realtime_url(facade), subprotocols=["realtime"]) as connection:  # type: ignore[list-item]
            assert connection.subprotocol == "realtime"
            client = Realtime(connection)
            created = await client.until("session.created")
            assert created["session"]["turn_detection"]["type"] == "server_vad"
            assert created["session"]["partial_transcripts"] is False
            await connection.send(json.dumps({"type": "session.update", "session": {"partial_transcripts": True}}))
            await client.until("session.updated")
            silence = np.zeros(8000, np.float32)
            # At the pace it is spoken: partial transcripts come while the user still speaks.
            await client.send_audio(np.concatenate([silence, speak(QUESTION), silence, silence]), pace=0.04)
            await client.until("response.done")
            return client

    client = asyncio.run(run())
    kinds = client.kinds()
    for expected in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                     "input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed",
                     "response.created", "response.audio_transcript.delta", "response.audio.delta",
                     "response.audio.done", "response.done"):  # fmt: skip
        assert expected in kinds, (expected, kinds)
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("input_audio_buffer.speech_stopped")
    partial = kinds.index("conversation.item.input_audio_transcription.partial")
    assert kinds.index("input_audio_buffer.speech_started") < partial < kinds.index("input_audio_buffer.committed")
    events = dict(reversed([(event["type"], event) for _, event in client.events]))
    started = events["input_audio_buffer.speech_started"]["audio_start_ms"]
    assert 400 <= started <= 700  # the speech began after half a second of silence
    assert "capitale" in events["conversation.item.input_audio_transcription.completed"]["transcript"].lower()
    done = [event for _, event in client.events if event["type"] == "response.done"][-1]["response"]
    assert done["status"] == "completed" and done["output_text"]
    audio = [event for _, event in client.events if event["type"] == "response.audio.delta"]
    assert len(base64.b64decode(audio[0]["delta"])) > 1000 and audio[0]["sample_rate"] > 8000
    wait_until(lambda: engine(triton_host, "slots_busy", "chat") == 0)


def test_speaking_over_the_reply_cancels_it_and_frees_the_slot(facade: str, triton_host: TritonHost) -> None:
    async def run() -> Realtime:
        async with websockets.connect(realtime_url(facade)) as connection:
            client = Realtime(connection)
            await client.until("session.created")
            # Greedy, and long enough: a sampled reply may end before the user speaks over it.
            update = {"turn_detection": None, "temperature": 0, "max_response_output_tokens": 256}
            await connection.send(json.dumps({"type": "session.update", "session": update}))
            await client.until("session.updated")
            # Push to talk: the whole question, then commit.
            await client.send_audio(speak("Raconte-moi une très longue histoire sur Madagascar, s'il te plaît."))
            await connection.send(json.dumps({"type": "input_audio_buffer.commit"}))
            await client.until("response.audio.delta")
            # The user speaks again before the reply has ended: the reply stops.
            await connection.send(json.dumps({"type": "session.update", "session": {"turn_detection": {}}}))
            await client.until("session.updated")
            await client.send_audio(speak("Attends, arrête."))
            await client.until("response.done")
            return client

    client = asyncio.run(run())
    done = next(event for _, event in client.events if event["type"] == "response.done")["response"]
    assert done["status"] == "cancelled"
    kinds = client.kinds()
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("response.done")
    wait_until(lambda: engine(triton_host, "slots_busy", "chat") == 0, timeout_s=5)


def test_bad_frames_get_error_events_and_the_conversation_goes_on(facade: str) -> None:
    async def run() -> list[dict[str, Any]]:
        async with websockets.connect(realtime_url(facade)) as connection:
            client = Realtime(connection)
            await client.until("session.created")
            errors = []
            for frame in ("not json", json.dumps({"type": "dance"}), b"\x01\x02\x03",
                          json.dumps({"type": "input_audio_buffer.append", "audio": "@@@"}),
                          json.dumps({"type": "input_audio_buffer.commit"}),
                          json.dumps({"type": "session.update", "session": {"language": "en"}}),
                          b"\x00" * (256 * 1024 + 2)):  # fmt: skip
                await connection.send(frame)
                errors.append((await client.until("error"))["error"])
            await connection.send(json.dumps({"type": "session.update", "session": {"language": "fr"}}))
            assert (await client.until("session.updated"))["session"]["language"] == "fr"
            return errors

    codes = [error["code"] for error in asyncio.run(run())]
    assert codes == ["invalid_event", "invalid_event", "invalid_audio", "invalid_audio",
                     "input_audio_buffer_commit_empty", "invalid_event", "frame_too_large"]  # fmt: skip


def test_an_idle_or_expired_conversation_is_closed_with_a_reason(triton_host: TritonHost, tmp_path: Path) -> None:
    env = {"MILO_REALTIME_IDLE_TIMEOUT_S": "1", "MILO_REALTIME_MAX_SESSION_S": "3"}

    async def run(url: str) -> list[str]:
        closes = []
        async with websockets.connect(realtime_url(url)) as idle:
            client = Realtime(idle)
            await client.until("session.created")
            closes.append((await client.until("error"))["error"]["code"])
            with pytest.raises(websockets.ConnectionClosedOK):
                await idle.recv()
        async with websockets.connect(realtime_url(url)) as busy:
            client = Realtime(busy)
            await client.until("session.created")
            started = time.monotonic()
            while time.monotonic() - started < 5:  # a frame every 0.5 s: never idle
                try:
                    await busy.send(b"\x00" * 640)
                    event = json.loads(await asyncio.wait_for(busy.recv(), 0.5))
                except TimeoutError:
                    continue
                except websockets.ConnectionClosedOK:
                    break
                if event["type"] == "error":
                    closes.append(event["error"]["code"])
            assert 2.5 < time.monotonic() - started < 4.5
        return closes

    with facade_process(triton_host, tmp_path / "facade.log", **env) as url:
        closes = asyncio.run(run(url))
    assert closes == ["idle_timeout", "session_expired"]


def test_a_committed_turn_without_speech_is_never_answered(facade: str) -> None:
    async def run() -> list[str]:
        async with websockets.connect(realtime_url(facade)) as connection:
            client = Realtime(connection)
            await client.until("session.created")
            await connection.send(json.dumps({"type": "session.update", "session": {"turn_detection": None}}))
            await client.until("session.updated")
            noise = np.random.default_rng(3).normal(0, 0.003, 24000).astype(np.float32)  # room noise
            await client.send_audio(noise)
            await connection.send(json.dumps({"type": "input_audio_buffer.commit"}))
            completed = await client.until("conversation.item.input_audio_transcription.completed")
            assert completed["transcript"] == ""
            with pytest.raises(TimeoutError):
                await client.until("response.created", timeout=3)
            return client.kinds()

    assert "response.created" not in asyncio.run(run())


def test_silence_is_an_empty_transcript_never_a_made_up_one(facade: str) -> None:
    """Whisper given silence writes something (it did in this suite); no route passes it on."""
    import openai

    quiet = np.random.default_rng(5).normal(0, 0.002, 32000).astype(np.float32)  # room noise, 2 s
    for audio in (np.zeros(32000, np.float32), quiet):
        files = {"file": ("quiet.wav", wav_of(audio), "audio/wav")}
        heard = httpx.post(f"{facade}/v1/stt", files=files, data={"language": "fr"}, timeout=60).json()
        assert (heard["text"], heard["language"], heard["duration"]) == ("", "fr", 2.0)
        auto = httpx.post(f"{facade}/v1/stt", files=files, timeout=60).json()
        assert (auto["text"], auto["language"]) == ("", "")
    sdk = openai.OpenAI(base_url=f"{facade}/v1", api_key="unused")
    assert sdk.audio.transcriptions.create(model="milo-stt", file=("quiet.wav", wav_of(quiet))).text == ""
