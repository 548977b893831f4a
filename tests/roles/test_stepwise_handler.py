"""Step-level batching without the server: ``StepwiseHandler`` around the real translation role
(the torch engine on the CPU), called as the stock server's Python backend calls it."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from contract import codec, tensors
from contract.records import InputError, TranslateRequest, Translation
from milo_voice.roles.translate import Translator
from milo_voice.serving.search_metrics import SECONDS, SENTENCES, STEPS, TritonSearchMetrics
from milo_voice.serving.stepwise import CANCEL_POLL_S, StepwiseHandler, StoppedError
from tests.roles.test_nllb_torch import REQUESTS as ALL_REQUESTS

REQUESTS = ALL_REQUESTS[3:]  # two sentences, two sentences, one word


@pytest.fixture
def handler(embedded_dir: Path) -> Iterator[StepwiseHandler]:
    translator = Translator(embedded_dir / "translate", compute_type="float32", engine="torch", search_sentences=2)
    made = StepwiseHandler(tensors.TRANSLATE, translator.stepwise())
    yield made
    made.close()
    assert not made._thread.is_alive()


class Answers:
    """What ``emit`` receives, by request: one final answer each."""

    def __init__(self) -> None:
        self.received: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()

    def emit(self, name: str) -> object:
        def emit(outputs: object, final: bool) -> None:
            assert final
            self.received.put((name, outputs))

        return emit

    def take(self, count: int) -> dict[str, object]:
        got = dict(self.received.get(timeout=30) for _ in range(count))
        assert self.received.empty()  # each request is answered once
        return got


def _results(outputs: object) -> list[Translation | InputError]:
    """Every row's result (a refused row: its InputError)."""
    assert isinstance(outputs, dict)
    rows = len(outputs["error"])
    return [
        (InputError(error.decode()) if (error := outputs["error"][i].item()) else codec.unpack_result(
            tensors.TRANSLATE, {name: value[i : i + 1] for name, value in outputs.items()}))
        for i in range(rows)
    ]  # fmt: skip


def test_requests_join_as_they_come_and_wait_for_rows(handler: StepwiseHandler, embedded_dir: Path) -> None:
    """Two rows of search: the second two-sentence text is admitted only once the first has ended;
    a request of several rows, one refused, is answered whole, the refusal in its row."""
    expected = Translator(embedded_dir / "translate", compute_type="float32").translate_batch(REQUESTS)
    answers = Answers()
    first = handler.start(codec.pack_request(tensors.TRANSLATE, REQUESTS[0]), answers.emit("first"))
    assert first.dequeued.wait(30)
    second = handler.start(codec.pack_request(tensors.TRANSLATE, REQUESTS[1]), answers.emit("second"))
    assert second.dequeued.wait(30)
    got = answers.take(2)
    assert _results(got["first"])[0].text == expected[0].text  # type: ignore[union-attr]
    assert _results(got["second"])[0].text == expected[1].text  # type: ignore[union-attr]
    rows = [REQUESTS[2], TranslateRequest("Bonjour", "fr", "fr"), REQUESTS[2]]
    packed = [codec.pack_request(tensors.TRANSLATE, row) for row in rows]
    inputs = {name: np.concatenate([p[name] for p in packed]) for name in packed[0]}
    handler.start(inputs, answers.emit("rows")).dequeued.wait(30)
    several = _results(answers.take(1)["rows"])
    assert [r.text for r in several if isinstance(r, Translation)] == [expected[2].text] * 2
    assert isinstance(several[1], InputError) and "both 'fr'" in str(several[1])


def test_a_request_that_waits_for_rows_is_admitted_only_when_they_free(handler: StepwiseHandler) -> None:
    """The first request finds the two rows free: it is released once its first step is launched,
    while it decodes. The second, two sentences more, waits until the first ends."""
    answers = Answers()
    release = _held_back(handler)
    first = handler.start(codec.pack_request(tensors.TRANSLATE, REQUESTS[0]), answers.emit("first"))
    assert first.dequeued.wait(30)
    second = handler.start(codec.pack_request(tensors.TRANSLATE, REQUESTS[1]), answers.emit("second"))
    assert not second.dequeued.wait(0.2)  # no step has ended: the rows stay taken
    release.set()
    assert second.dequeued.wait(30)
    assert answers.received.get_nowait()[0] == "first"  # answered before the second took its rows
    assert set(answers.take(1)) == {"second"}


def _held_back(handler: StepwiseHandler) -> threading.Event:
    """Make the role's thread wait, each step launched, until the returned event is set."""
    release = threading.Event()
    original = handler.role.collect
    handler.role.collect = lambda: (release.wait(), original())[1]  # type: ignore[method-assign]
    return release


def test_a_request_whose_client_left_stops_decoding(handler: StepwiseHandler) -> None:
    answers = Answers()
    gone = threading.Event()
    release = _held_back(handler)
    handler.start(codec.pack_request(tensors.TRANSLATE, REQUESTS[0]), answers.emit("gone"), gone.is_set)
    gone.set()
    threading.Timer(CANCEL_POLL_S + 0.1, release.set).start()  # asked after the first step
    got = answers.take(1)["gone"]
    assert isinstance(got, InputError) and "cancelled" in str(got)
    assert not handler.role.busy  # its sentences left the search


def test_a_client_is_asked_only_once_its_request_has_decoded_a_while(handler: StepwiseHandler) -> None:
    """Asking is a round trip to the server between two steps: a request is asked whether its
    client has gone only after ``CANCEL_POLL_S`` of decoding, and then at most that often."""
    asked: list[float] = []

    def is_cancelled() -> bool:
        asked.append(time.monotonic())
        return False

    answers = Answers()
    release = _held_back(handler)
    started = time.monotonic()
    handler.start(codec.pack_request(tensors.TRANSLATE, REQUESTS[0]), answers.emit("long"), is_cancelled)
    threading.Timer(2.5 * CANCEL_POLL_S, release.set).start()  # its first step comes late: asked then
    assert isinstance(answers.take(1)["long"], dict)
    assert asked and asked[0] - started >= CANCEL_POLL_S
    assert all(later - earlier >= CANCEL_POLL_S for earlier, later in itertools.pairwise(asked))


class Steps:
    """A search observer that keeps what it is told."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float]] = []
        self.flushes = 0

    def step(self, sentences: int, seconds: float) -> None:
        self.steps.append((sentences, seconds))

    def flush(self) -> None:
        self.flushes += 1


def test_each_step_is_reported_with_its_sentences_and_time(embedded_dir: Path) -> None:
    translator = Translator(embedded_dir / "translate", compute_type="float32", engine="torch", search_sentences=2)
    observer = Steps()
    handler = StepwiseHandler(tensors.TRANSLATE, translator.stepwise(), observer)
    try:
        answers = Answers()
        handler.start(codec.pack_request(tensors.TRANSLATE, REQUESTS[0]), answers.emit("two sentences"))
        answers.take(1)
    finally:
        handler.close()
    assert observer.steps and all(seconds > 0 for _sentences, seconds in observer.steps)
    assert observer.steps[0][0] == 2  # both sentences decoded from the first step
    assert observer.flushes >= 1  # when idle, and when it stops


def test_the_search_metrics_reach_triton_at_most_every_flush_interval() -> None:
    """A Triton metric's update is a round trip to the server: steps are summed here, handed over
    on ``flush`` or once ``FLUSH_S`` has passed."""
    increments: list[tuple[str, float]] = []

    class Family:
        COUNTER = "counter"

        def __init__(self, name: str, description: str, kind: str) -> None:
            self.name = name

        def Metric(self, labels: dict[str, str]) -> object:
            family = self

            class Metric:
                def increment(self, value: float) -> None:
                    increments.append((family.name, value))

            return Metric()

    metrics = TritonSearchMetrics(type("pb_utils", (), {"MetricFamily": Family}), "translate")
    metrics.step(4, 0.002)
    metrics.step(6, 0.003)
    assert increments == []  # within the interval: kept
    metrics.flush()
    assert dict(increments) == {STEPS[0]: 2, SENTENCES[0]: 10, SECONDS[0]: pytest.approx(0.005)}
    metrics.flush()  # nothing new: nothing sent
    assert len(increments) == 3


def test_requests_held_when_the_model_stops_are_answered(handler: StepwiseHandler) -> None:
    answers = Answers()
    release = _held_back(handler)
    handler.start(codec.pack_request(tensors.TRANSLATE, REQUESTS[1]), answers.emit("left"))
    threading.Timer(0.2, release.set).start()
    handler.close()
    assert isinstance(answers.take(1)["left"], StoppedError)


def test_a_request_that_cannot_be_queued_fails_alone(handler: StepwiseHandler, embedded_dir: Path) -> None:
    answers = Answers()
    submit = handler.role.submit

    def failing_submit(key: object, request: TranslateRequest) -> object:
        if request.text == "boom":
            raise RuntimeError("no room for it")
        return submit(key, request)

    handler.role.submit = failing_submit  # type: ignore[method-assign]
    handler.start(codec.pack_request(tensors.TRANSLATE, TranslateRequest("boom", "mg", "fr")), answers.emit("failed"))
    handler.start(codec.pack_request(tensors.TRANSLATE, REQUESTS[2]), answers.emit("served"))
    got = answers.take(2)
    assert isinstance(got["failed"], RuntimeError) and "no room" in str(got["failed"])
    expected = Translator(embedded_dir / "translate", compute_type="float32").translate_batch([REQUESTS[2]])
    assert _results(got["served"])[0].text == expected[0].text  # type: ignore[union-attr]


def test_after_a_step_fails_while_it_decodes_the_next_requests_are_served(handler: StepwiseHandler) -> None:
    """What a failed step held fails with it; the steps launched are collected, so the next launch."""
    answers = Answers()
    admit = handler._release_admitted
    failures = iter([RuntimeError("the step failed")])

    def failing_admit() -> None:
        if (error := next(failures, None)) is not None:
            raise error
        admit()

    handler._release_admitted = failing_admit  # type: ignore[method-assign]
    handler.start(codec.pack_request(tensors.TRANSLATE, REQUESTS[2]), answers.emit("first"))
    assert isinstance(answers.take(1)["first"], RuntimeError)
    handler.start(codec.pack_request(tensors.TRANSLATE, REQUESTS[2]), answers.emit("second"))
    assert isinstance(answers.take(1)["second"], dict)
