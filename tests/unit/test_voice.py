"""Spoken turns without a model server: where a reply is cut to be spoken, which voice speaks it,
voice activity and turn taking, and the reply pipeline on a scripted transport."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api_facade.main import create_app
from api_facade.settings import Settings
from api_facade.voice.language import detect_language, reply_language
from api_facade.voice.reply import ReplyAudio, ReplyEnd, ReplyText, Voice, spoken_reply
from api_facade.voice.sentences import ChunkRules, SentenceChunker
from api_facade.voice.speech import spoken_text, text_pieces
from api_facade.voice.vad import (
    FRAME,
    LONGEST_CHUNK_S,
    MODEL_PATH,
    SpeechStarted,
    SpeechStopped,
    TurnDetection,
    TurnDetector,
    VadModel,
    VadStream,
)
from client import CallOptions
from contract import codec, tensors
from contract.records import (
    Cancelled,
    ChatDelta,
    ChatMessage,
    ChatReply,
    ChatRequest,
    InputError,
    Speech,
    Transcription,
)
from tests.conftest import speak
from tests.unit.test_facade_routes import ScriptedTriton, speech


def chunks(text: str, rules: ChunkRules | None = None, step: int = 3) -> list[str]:
    """``text`` fed a few characters at a time, as a chat streams it, then flushed."""
    chunker = SentenceChunker(rules)
    pieces = [piece for i in range(0, len(text), step) for piece in chunker.feed(text[i : i + step])]
    rest = chunker.flush()
    return [*pieces, rest] if rest else pieces


def test_a_reply_is_cut_at_sentence_ends_never_inside_numbers_or_names() -> None:
    text = "Bonjour, je suis Milo et je vous écoute. Le prix est de 3.5 euros! M.Rabe arrive demain? Oui. À demain."
    assert chunks(text) == [
        "Bonjour, je suis Milo et je vous écoute.",
        "Le prix est de 3.5 euros!",
        "M.Rabe arrive demain? Oui.",  # "M.Rabe arrive demain" alone is shorter than a piece
        "À demain.",
    ]


def test_the_first_piece_may_end_at_a_clause_and_no_piece_waits_past_its_limit() -> None:
    assert chunks("Misaotra betsaka tompoko, afaka manampy anao aho anio.")[0] == "Misaotra betsaka tompoko,"
    assert chunks("Eny, tompoko. Afaka manampy anao aho.")[0] == "Eny, tompoko."
    unpunctuated = " ".join(["teny"] * 100)
    pieces = chunks(unpunctuated, ChunkRules(first_max_chars=30, max_chars=60))
    assert len(pieces[0]) <= 30 and all(len(piece) <= 60 for piece in pieces[1:])
    assert " ".join(pieces) == unpunctuated
    # A reply opening with a long sentence is heard from its first words; the rest is whole.
    long_opening = (
        "Madagasikara dia nosy lehibe any amin'ny Ranomasimbe Indiana, ary maro ny karazam-biby "
        "tsy hita any an-kafa. Tsara ny toetr'andro."
    )
    first, *rest = chunks(long_opening)
    assert first == "Madagasikara dia nosy lehibe any amin'ny" and len(first) <= ChunkRules().first_max_chars
    assert rest == ["Ranomasimbe Indiana, ary maro ny karazam-biby tsy hita any an-kafa.", "Tsara ny toetr'andro."]
    assert chunks("Première ligne\nDeuxième ligne") == ["Première ligne", "Deuxième ligne"]


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Manao ahoana ianao? Tsara be ny andro anio.", "mg"),
        ("Antananarivo no renivohitr'i Madagasikara.", "mg"),
        ("Bonjour, je vais très bien, merci.", "fr"),
        ("La capitale de Madagascar est Antananarivo.", "fr"),
        ("OK", None),
        ("Antananarivo", None),
    ],
)
def test_the_language_of_a_reply_is_read_from_its_words(text: str, language: str | None) -> None:
    assert detect_language(text) == language


def test_the_voice_is_the_asked_language_then_the_replys_then_the_heard_one() -> None:
    assert reply_language("mg", "fr", "Bonjour à vous.", "mg") == "mg"
    assert reply_language(None, "mg", "Bonjour, je suis là.", "mg") == "fr"
    assert reply_language(None, "fr", "OK", "mg") == "fr"
    assert reply_language(None, None, "OK", "mg") == "mg"


def probabilities(*runs: tuple[float, int]) -> np.ndarray:
    return np.concatenate([np.full(frames, p, np.float32) for p, frames in runs])


def test_a_turn_starts_after_enough_speech_and_ends_after_enough_silence() -> None:
    detector = TurnDetector(TurnDetection(threshold=0.5, silence_duration_ms=320, min_speech_ms=96))
    # 32 ms frames: a 2-frame click, then speech with a dip that stays above the hysteresis, then silence.
    events = detector.feed(probabilities((0.0, 10), (0.9, 2), (0.0, 5), (0.8, 20), (0.4, 4), (0.9, 10), (0.1, 12)))
    assert events == [SpeechStarted(17 * 32), SpeechStopped(51 * 32)]
    assert not detector.speaking


def test_voice_activity_finds_spoken_audio_however_the_stream_is_cut() -> None:
    from faster_whisper.utils import get_assets_path

    # The facade's copy is the file faster-whisper ships (the STT role's VAD).
    assert MODEL_PATH.read_bytes() == (Path(get_assets_path()) / "silero_vad_v6.onnx").read_bytes()
    model = VadModel()
    audio = np.concatenate([np.zeros(16000, np.float32), speak("Bonjour, comment allez-vous ?"), np.zeros(16000)])
    whole = model.stream()(audio)
    stream = model.stream()
    pieces = np.concatenate([stream(audio[i : i + 700]) for i in range(0, len(audio), 700)])
    np.testing.assert_allclose(pieces, whole, atol=1e-5)
    assert len(whole) == len(audio) // FRAME
    speech = np.flatnonzero(whole >= 0.5)
    assert 0.9 < speech[0] * FRAME / 16000 < 1.2 and whole[:25].max() < 0.2


class CountingVad(VadModel):
    """The real model, counting the samples its streams are given."""

    def __init__(self) -> None:
        super().__init__()
        self.samples_read = 0

    def stream(self) -> VadStream:
        return CountedStream(self)


class CountedStream(VadStream):
    model: CountingVad

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        self.model.samples_read += len(audio)
        return super().__call__(audio)


def test_a_file_is_read_until_its_speech_starts_and_answered_as_if_read_whole() -> None:
    model = CountingVad()
    said = speak("Bonjour, comment allez-vous ?")
    silence = np.zeros(16000 * 9, np.float32)
    files = {
        "speech first": np.concatenate([said, silence]),
        "speech last": np.concatenate([silence, said]),
        "silence": silence,
        "noise": np.random.default_rng(0).normal(0, 0.01, 16000 * 5).astype(np.float32),
    }
    for name, audio in files.items():
        answers = {model.has_speech(audio, first_chunk_s=s) for s in (0.01, 0.5, 2.0, LONGEST_CHUNK_S)}
        assert answers == {name.startswith("speech")}, name
    model.samples_read = 0
    assert model.has_speech(files["speech first"])
    assert model.samples_read <= 16000 * 1.5  # its first chunks only, of 10 s
    model.samples_read = 0
    assert model.has_speech(files["speech first"], first_chunk_s=LONGEST_CHUNK_S)
    assert model.samples_read == len(files["speech first"])  # one chunk: the whole file


class PacedTriton(ScriptedTriton):
    """A scripted transport whose chat stream sends a piece every ``interval`` seconds, and which
    records when each model was called."""

    def __init__(self, pieces: list[ChatDelta], interval: float = 0.05, refuse: str = "") -> None:
        super().__init__(
            {
                "tts": self.speech,
                "chat_cancel": lambda r: Cancelled(1),
                "stt": lambda r: Transcription("", "fr", 1.0, 0.0, 1.0, []),
            }
        )
        self.pieces, self.interval, self.refuse = pieces, interval, refuse
        self.started = time.perf_counter()
        self.calls: list[tuple[str, float]] = []
        self.stream_closed = asyncio.Event()
        self.cancelled: list[str] = []

    def speech(self, request: Any) -> Speech | InputError:
        self.calls.append((f"tts:{request.language}:{request.text}", time.perf_counter() - self.started))
        if request.text == self.refuse:
            return InputError("nothing to say")
        return Speech(np.zeros(800, np.float32), 16000, request.text)

    async def cancel(self, io: tensors.ModelIO, request_id: str) -> bool:
        self.cancelled.append(io.name)
        return True

    async def stream_tensors(
        self, io: tensors.ModelIO, inputs: codec.Arrays, options: CallOptions
    ) -> AsyncIterator[codec.Arrays]:
        try:
            for piece in self.pieces:
                await asyncio.sleep(self.interval)
                self.calls.append((f"chat:{piece.text}", time.perf_counter() - self.started))
                yield codec.pack_piece(io, piece)
        finally:
            self.stream_closed.set()


REPLY = [ChatDelta("Bonjour, je suis Milo. "), ChatDelta("Je parle français "), ChatDelta("et malgache."),
         ChatDelta(" Au revoir !", "stop")]  # fmt: skip


def collect(triton: PacedTriton, voice: Voice) -> list[Any]:
    async def run() -> list[Any]:
        request = ChatRequest([ChatMessage("user", "Salut")])
        events = [event async for event in spoken_reply(triton, request, voice)]
        await triton.wait_background()
        return events

    return asyncio.run(run())


def test_each_piece_is_spoken_while_the_chat_still_writes_the_next() -> None:
    triton = PacedTriton(REPLY)
    events = collect(triton, Voice(default="mg"))
    audio = [event for event in events if isinstance(event, ReplyAudio)]
    assert [a.text for a in audio] == ["Bonjour, je suis Milo.", "Je parle français et malgache.", "Au revoir !"]
    assert [a.index for a in audio] == [0, 1, 2]
    # French text, no language asked and the default voice Malagasy: spoken in French.
    assert {a.language for a in audio} == {"fr"}
    assert isinstance(events[-1], ReplyEnd) and events[-1].text == "".join(d.text for d in REPLY).strip()
    assert "".join(e.text for e in events if isinstance(e, ReplyText)) == "".join(d.text for d in REPLY)
    times = dict(triton.calls)
    # The first piece went to the voice before the chat had written its second piece.
    assert times["tts:fr:Bonjour, je suis Milo."] < times["chat:Je parle français "]
    first_audio = events.index(audio[0])
    assert any(isinstance(e, ReplyText) for e in events[first_audio + 1 :])


def test_a_piece_the_voice_refuses_is_left_unspoken_and_the_rest_is_spoken() -> None:
    triton = PacedTriton(
        [ChatDelta("Voici la liste de vos courses: "), ChatDelta("***\n"), ChatDelta("Merci.", "stop")]
    )
    triton.refuse = "***"
    events = collect(triton, Voice(asked="fr"))
    assert [e.text for e in events if isinstance(e, ReplyAudio)] == ["Voici la liste de vos courses:", "Merci."]
    assert events[-1].unspoken == ("***",)


def test_closing_the_reply_early_stops_the_chat_on_the_server() -> None:
    triton = PacedTriton(REPLY, interval=0.2)

    async def run() -> None:
        reply = spoken_reply(triton, ChatRequest([ChatMessage("user", "Salut")]), Voice(asked="fr"))
        async for event in reply:
            if isinstance(event, ReplyAudio):
                break
        await reply.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(triton.stream_closed.wait(), 5)
        await triton.wait_background()

    asyncio.run(run())
    assert triton.cancelled == ["chat_cancel"]
    assert not any(call.startswith("chat: Au revoir") for call, _ in triton.calls)


class SlowTts(ScriptedTriton):
    """A TTS that takes ``seconds`` a piece and records, per piece, how many were in flight when
    it was sent and when it finished."""

    def __init__(self, seconds: float = 0.03, refuse: str = "") -> None:
        super().__init__({})
        self.seconds, self.refuse = seconds, refuse
        self.in_flight = 0
        self.sent_with: list[tuple[str, int]] = []  # (piece, others in flight when it was sent)
        self.finished: list[str] = []

    async def infer_tensors(self, io: tensors.ModelIO, inputs: codec.Arrays, options: CallOptions) -> codec.Arrays:
        (request,) = codec.unpack_requests(io, inputs)
        self.sent_with.append((request.text, self.in_flight))
        self.in_flight += 1
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.in_flight -= 1
        self.finished.append(request.text)
        result = InputError("nothing to say") if request.text == self.refuse else speech(request)
        return codec.pack_results(io, [result])


SIX_SENTENCES = (
    "Bonjour à tous, je suis Milo. Je parle le français et le malgache. Je lis les nombres. "
    "Je lis aussi les dates. Je traduis des phrases. Au revoir et à bientôt."
)


def test_a_text_is_spoken_first_piece_alone_then_the_rest_together_in_order() -> None:
    triton = SlowTts()

    async def run() -> list[str]:
        return [s.spoken_text async for s in spoken_text(triton, SIX_SENTENCES, "fr", 1.0, ahead=3)]

    spoken = asyncio.run(run())
    # Cut as a streamed reply is: short sentences joined after the first.
    assert (
        spoken
        == text_pieces(SIX_SENTENCES)
        == [
            "Bonjour à tous, je suis Milo.",
            "Je parle le français et le malgache.",
            "Je lis les nombres. Je lis aussi les dates.",
            "Je traduis des phrases. Au revoir et à bientôt.",
        ]
    )
    sent = dict(triton.sent_with)
    # Nothing else was sent while the first piece was synthesised; the next three went together.
    assert sent[spoken[0]] == 0 and triton.sent_with[1][0] == spoken[1]
    assert [sent[piece] for piece in spoken[1:4]] == [0, 1, 2]
    assert max(sent.values()) < 3  # never more than ``ahead`` in flight


def test_a_later_piece_the_voice_cannot_say_is_left_out_but_a_refused_first_piece_is_an_error() -> None:
    triton = SlowTts(refuse="***")

    async def run(text: str) -> list[str]:
        return [s.spoken_text async for s in spoken_text(triton, text, "fr", 1.0)]

    assert asyncio.run(run("Voici ce que je vois.\n***\nMerci beaucoup.")) == [
        "Voici ce que je vois.",
        "Merci beaucoup.",
    ]
    with pytest.raises(InputError):
        asyncio.run(run("***"))


def test_closing_a_spoken_text_early_cancels_the_pieces_in_flight() -> None:
    triton = SlowTts(seconds=0.2)

    async def run() -> None:
        pieces = spoken_text(triton, SIX_SENTENCES, "fr", 1.0)
        await anext(pieces)
        await pieces.aclose()  # type: ignore[attr-defined]
        await asyncio.sleep(0.3)

    asyncio.run(run())
    assert triton.finished == ["Bonjour à tous, je suis Milo."] and triton.in_flight == 0


@pytest.fixture
def paced_api() -> Iterator[tuple[TestClient, PacedTriton]]:
    triton = PacedTriton(REPLY, interval=0.01)
    settings = Settings(triton_url="scripted:0", redis_url=None, voice_default_language="mg")
    with TestClient(create_app(settings, triton=triton)) as client:
        yield client, triton


def test_voice_mode_speaks_a_french_reply_in_french_when_no_language_is_given(
    paced_api: tuple[TestClient, PacedTriton],
) -> None:
    api, triton = paced_api
    triton.answers["chat"] = lambda r: ChatReply("Bonjour, je vais bien.", 3, 4, "stop")
    answer = api.post("/v1/chat", json={"message": "Salut", "mode": "voice"}).json()
    assert answer["reply"] == "Bonjour, je vais bien."
    assert [call for call, _ in triton.calls if call.startswith("tts")] == ["tts:fr:Bonjour, je vais bien."]


def test_a_spoken_question_with_no_speech_is_refused_not_answered(paced_api: tuple[TestClient, PacedTriton]) -> None:
    api, triton = paced_api
    wav = speech_wav(np.zeros(16000, np.float32))
    response = api.post("/v1/voice", files={"file": ("q.wav", wav, "audio/wav")})
    assert response.status_code == 422 and response.json()["error"]["code"] == "no_speech"
    assert not [name for name, *_ in triton.sent if name.startswith("chat")]
    bad = api.post("/v1/voice", files={"file": ("q.wav", wav, "audio/wav")}, data={"format": "flac"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "format"


def speech_wav(audio: np.ndarray) -> bytes:
    import io

    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio, 16000, format="WAV")
    return buffer.getvalue()


def test_a_client_gone_before_the_reply_body_started_stops_the_chat(
    paced_api: tuple[TestClient, PacedTriton],
) -> None:
    """The client leaves while the status line is being sent, before the body is iterated: the
    request is cancelled there, and the reply's chat is cancelled, not written to its end."""
    import httpx

    api, triton = paced_api
    triton.interval = 0.2
    triton.answers["stt"] = lambda r: Transcription("Salut Milo", "fr", 1.0, 0.9, 2.0, [])
    wav = speech_wav(np.concatenate([speak("Bonjour, comment allez-vous ?"), np.zeros(8000, np.float32)]))
    upload = httpx.Request("POST", "http://facade/v1/voice", files={"file": ("q.wav", wav, "audio/wav")})
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": "/v1/voice", "raw_path": b"/v1/voice", "query_string": b"",
        "root_path": "", "headers": [(k.lower().encode(), v.encode()) for k, v in upload.headers.items()],
        "client": ("127.0.0.1", 50000), "server": ("facade", 80),
    }  # fmt: skip
    body = [{"type": "http.request", "body": upload.read(), "more_body": False}]
    status_line = asyncio.Event()
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        if body:
            return body.pop(0)
        await status_line.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        if message["type"] == "http.response.start":
            status_line.set()
            await asyncio.sleep(30)  # a slow network: the client is gone before this returns

    async def converse() -> None:
        await api.app(scope, receive, send)  # type: ignore[arg-type]
        await asyncio.wait_for(triton.stream_closed.wait(), 5)
        await triton.wait_background()

    assert api.portal is not None
    api.portal.call(converse)
    assert sent == ["http.response.start"]
    assert triton.cancelled == ["chat_cancel"]
    assert not any(call.startswith("chat: Au revoir") for call, _ in triton.calls)
