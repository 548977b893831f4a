"""The contract: every model's records packed into tensors and back, as the client and the servers do."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from contract import codec, tensors
from contract.records import (
    Cancelled,
    CancelRequest,
    ChatDelta,
    ChatMessage,
    ChatReply,
    ChatRequest,
    InputError,
    Segment,
    Speech,
    SttRequest,
    Transcription,
    TranslateRequest,
    Translation,
    TtsRequest,
)

CHAT = ChatRequest(
    [ChatMessage("user", "Salama é")], "mg", 12, 0.5, 0.9, 7, ("\n", "Veloma"), request_id="r1"
)  # fmt: skip
REQUESTS = {
    "stt": SttRequest(np.linspace(-1, 1, 801, dtype=np.float32), "fr"),
    "tts": TtsRequest("Salama.", "mg", 1.5),
    "tts_stream": TtsRequest("Salama. Veloma.", "mg", 0.8, request_id="s1"),
    "translate": TranslateRequest("Bonjour à tous.", "fr", "mg"),
    "chat": CHAT,
    "chat_stream": CHAT,
    "chat_cancel": CancelRequest("r1"),
    "tts_cancel": CancelRequest("s1"),
}
RESULTS = {
    "stt": Transcription("bonjour", "fr", 0.9, 0.8, 1.5, [Segment(0.0, 1.5, "bonjour", -0.2, 0.01)], tokens=4),
    "tts": Speech(np.linspace(-0.5, 0.5, 300, dtype=np.float32), 16000, "salama"),
    "tts_stream": Speech(np.linspace(-0.5, 0.5, 200, dtype=np.float32), 16000, "veloma"),
    "translate": Translation("Manao ahoana daholo ianareo.", -0.25, "sha256:478022cc2c182d0c"),
    "chat": ChatReply("Salama!", 3, 20, "stop", trimmed_messages=1, cached_tokens=12),
    "chat_stream": ChatDelta("Sal", ""),
    "chat_cancel": Cancelled(1),
    "tts_cancel": Cancelled(0),
}


def same(a: object, b: object) -> bool:
    """Records equal field by field (audio compared as arrays)."""
    fields = [f.name for f in dataclasses.fields(a)]  # type: ignore[arg-type]
    for name in fields:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            if not np.array_equal(x, y):
                return False
        elif x != y:
            return False
    return type(a) is type(b)


def test_every_model_has_a_record_for_its_tensors() -> None:
    for io in tensors.MODELS.values():
        for record, specs in ((io.request, io.inputs), (io.result, io.outputs)):
            names = {f.name for f in dataclasses.fields(record)}
            carried = {s.attribute for s in specs if s.name != "error" and not any(t.length == s.name for t in specs)}
            assert carried <= names, (io.name, carried - names)
            required = {f.name for f in dataclasses.fields(record) if f.default is dataclasses.MISSING}
            required -= {f.name for f in dataclasses.fields(record) if f.default_factory is not dataclasses.MISSING}
            assert required <= carried, (io.name, required - carried)


@pytest.mark.parametrize("name", sorted(tensors.MODELS))
def test_requests_and_results_round_trip(name: str) -> None:
    io = tensors.MODELS[name]
    inputs = codec.pack_request(io, REQUESTS[name])
    (request,) = codec.unpack_requests(io, inputs)
    assert same(request, REQUESTS[name])
    outputs = codec.pack_piece(io, RESULTS[name]) if io.streaming else codec.pack_results(io, [RESULTS[name]])
    assert same(codec.unpack_result(io, outputs), RESULTS[name])
    for spec in io.inputs:
        if spec.name in inputs:
            assert inputs[spec.name].dtype == (np.object_ if spec.dtype is np.bytes_ else spec.dtype)
            assert inputs[spec.name].ndim == (1 if io.streaming else 2)


def test_optional_inputs_left_empty_are_not_sent_and_read_back_as_the_defaults() -> None:
    inputs = codec.pack_request(tensors.CHAT, ChatRequest([ChatMessage("user", "Salama")]))
    assert sorted(inputs) == ["messages"]
    (request,) = codec.unpack_requests(tensors.CHAT, inputs)
    assert request == ChatRequest([ChatMessage("user", "Salama")])
    tts = codec.pack_request(tensors.TTS, TtsRequest("Salama", "mg"))
    del tts["speed"]
    assert codec.unpack_requests(tensors.TTS, tts) == [TtsRequest("Salama", "mg", 1.0)]


def test_a_batch_answers_each_row_and_a_refusal_in_its_error_tensor() -> None:
    short, long = (Speech(np.ones(n, dtype=np.float32), 16000, str(n)) for n in (3, 7))
    outputs = codec.pack_results(tensors.TTS, [long, InputError("text is empty"), short])
    assert outputs["audio"].shape == (3, 7) and outputs["num_samples"].ravel().tolist() == [7, 0, 3]
    rows = [{name: value[i : i + 1] for name, value in outputs.items()} for i in range(3)]
    assert codec.unpack_result(tensors.TTS, rows[2]).audio.size == 3
    assert codec.unpack_result(tensors.TTS, rows[0]).spoken_text == "7"
    with pytest.raises(InputError, match="text is empty"):
        codec.unpack_result(tensors.TTS, rows[1])


def test_an_unreadable_row_is_that_requests_input_error() -> None:
    column = lambda values: np.array([[v] for v in values], dtype=np.object_)  # noqa: E731
    messages = column([b'[{"role": "user", "content": "Salama"}]', b"not json", b'[{"role": "user"}]', b'"text"'])
    requests = codec.unpack_requests(tensors.CHAT, {"messages": messages})
    assert requests[0] == ChatRequest([ChatMessage("user", "Salama")])
    assert [type(r) for r in requests[1:]] == [InputError] * 3
    assert "role, content" in str(requests[2]) and "JSON list" in str(requests[3])
    texts = codec.unpack_requests(
        tensors.TRANSLATE, {name: column([b"\xff", b"ok"]) for name in ("text", "source", "target")}
    )
    assert isinstance(texts[0], InputError) and texts[1] == TranslateRequest("ok", "ok", "ok")
    audio = codec.unpack_requests(tensors.STT, {"audio": column([b"\x00\x01\x02"])})
    assert isinstance(audio[0], InputError) and "whole number" in str(audio[0])
    stops = codec.unpack_requests(tensors.CHAT, {"messages": messages[:1], "stop": column([b"[1]"])})
    assert isinstance(stops[0], InputError) and "strings" in str(stops[0])


def test_a_streams_filler_piece_is_told_apart_from_its_pieces() -> None:
    for io, piece in ((tensors.TTS_STREAM, RESULTS["tts_stream"]), (tensors.CHAT_STREAM, ChatDelta("", "stop"))):
        assert codec.is_filler(io, codec.filler(io))
        assert not codec.is_filler(io, codec.pack_piece(io, piece))
        assert not codec.is_filler(io, codec.pack_piece(io, InputError("refused")))
