"""The stock server's step-level batching without the server: ``StepwiseHandler`` around the real
translation role (the torch engine on the CPU), called as the Python backend calls it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract import codec, tensors
from contract.records import InputError, ModelBusy, TranslateRequest, Translation
from milo_voice.roles.translate import Translator
from milo_voice.serving.stepwise import StepwiseHandler

REQUESTS = [
    TranslateRequest("Où se trouve l'hôpital le plus proche? Nous avons besoin d'eau et de nourriture.", "fr", "mg"),
    TranslateRequest("Veloma ary mandra-pihaona. Mila rano sy sakafo izahay.", "mg", "fr"),
    TranslateRequest("rano", "mg", "fr"),
]


@pytest.fixture
def translator(embedded_dir: Path) -> Translator:
    return Translator(embedded_dir / "translate", compute_type="float32", engine="torch", search_sentences=4)


@pytest.fixture
def handler(translator: Translator) -> Iterator[StepwiseHandler]:
    made = StepwiseHandler(tensors.TRANSLATE, translator.stepwise(max_waiting_sentences=2), wait_s=0.05)
    yield made
    made.close()
    assert not made._thread.is_alive()


def _result(outputs: object) -> Translation | InputError:
    assert isinstance(outputs, dict)
    try:
        return codec.unpack_result(tensors.TRANSLATE, outputs)  # type: ignore[no-any-return]
    except InputError as refused:
        return refused


def test_requests_decode_between_executions_and_are_answered_as_ctranslate2(
    handler: StepwiseHandler, embedded_dir: Path
) -> None:
    expected = Translator(embedded_dir / "translate", compute_type="float32").translate_batch(REQUESTS)
    for key, request in enumerate(REQUESTS[:2]):
        handler.take(key, codec.pack_request(tensors.TRANSLATE, request))
    # No execution in between: the role's thread decodes on its own.
    deadline = time.monotonic() + 30
    while not all(handler._done(key) for key in (0, 1)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    handler.take(2, codec.pack_request(tensors.TRANSLATE, REQUESTS[2]))  # joins after the others ended
    handler.wait([2])
    answers = [handler.answer(key) for key in (0, 1)]
    while (last := handler.answer(2)) is None:
        assert time.monotonic() < deadline
        handler.wait([2])
    got = [_result(a) for a in [*answers, last]]
    assert [g.text for g in got if isinstance(g, Translation)] == [e.text for e in expected]  # type: ignore[union-attr]
    assert not handler.holds(0)  # forgotten once answered


def test_refused_busy_and_cancelled_requests(handler: StepwiseHandler) -> None:
    handler.take("bad", codec.pack_request(tensors.TRANSLATE, TranslateRequest("Bonjour", "fr", "fr")))
    handler.wait(["bad"])  # nothing to decode: answered at once
    refused = _result(handler.answer("bad"))
    assert isinstance(refused, InputError) and "both 'fr'" in str(refused)
    # 4 rows and a waiting line of 2: a text of 7 sentences is refused busy, none of its rows kept.
    seven = TranslateRequest(" ".join(["Bonjour à tous."] * 7), "fr", "mg")
    handler.take("busy", codec.pack_request(tensors.TRANSLATE, seven))
    handler.wait(["busy"])
    assert isinstance(handler.answer("busy"), ModelBusy) and not handler.holds("busy")
    handler.take("a", codec.pack_request(tensors.TRANSLATE, REQUESTS[0]))
    handler.take("b", codec.pack_request(tensors.TRANSLATE, REQUESTS[1]))
    handler.cancel("a")
    assert not handler.holds("a")
    deadline = time.monotonic() + 30
    while (answer := handler.answer("b")) is None:
        assert time.monotonic() < deadline
        handler.wait(["b"])
    assert isinstance(_result(answer), Translation)
    while handler.role.busy:  # the cancelled request's rows are let go
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not handler.role.busy
