"""Continuous batching in the chat role, on the real embedded SmolLM2 GGUF and real llama.cpp.

Each conversation decoded among others must give exactly what it gives alone; what one
request asks (sampling, stop strings, limits, cancellation) must stay its own.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from contract import codec, tensors
from contract.records import ChatMessage, ChatReply, ChatRequest
from loadtests.bench.fixed_lengths.chat import FixedLengthChat
from milo_voice.roles.chat import ChatDone, LocalChat
from milo_voice.roles.generation import Failed, Finished, GenerationRequest, GenerationResult, Sampling, TextPiece
from milo_voice.roles.llama_engine import EngineBusyError, EngineStoppedError

QUESTIONS = [
    "What is the capital of France?",
    "Count from one to ten.",
    "Write a short poem about the sea.",
    "Say hello in French.",
    "What is two plus two?",
    "Name three colours.",
    "Who wrote Hamlet?",
    "Describe a cat in two sentences.",
]


@pytest.fixture(scope="module")
def chat(embedded_dir: Path) -> Iterator[LocalChat]:
    role = LocalChat(embedded_dir / "chat" / "model.gguf", n_ctx=1024, slots=8, batch_tokens=256)
    yield role
    role.close()


def ask(text: str, max_tokens: int = 40, **options: object) -> ChatRequest:
    return ChatRequest([ChatMessage("user", text)], max_tokens=max_tokens, temperature=0.0, **options)  # type: ignore[arg-type]


class Recorder:
    """A sink that keeps the pieces, the reply and when each arrived."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.piece_times: list[float] = []
        self.done = threading.Event()
        self.reply: ChatReply | None = None
        self.error: Exception | None = None
        self.finished_at = 0.0

    def __call__(self, event: object) -> None:
        if isinstance(event, TextPiece):
            self.pieces.append(event.text)
            self.piece_times.append(time.perf_counter())
        elif isinstance(event, ChatDone):
            self.reply, self.finished_at = event.reply, time.perf_counter()
            self.done.set()
        elif isinstance(event, Failed):
            self.error = event.error
            self.done.set()

    def wait(self, timeout: float = 120) -> ChatReply:
        assert self.done.wait(timeout), "the generation did not end"
        assert self.error is None, self.error
        assert self.reply is not None
        return self.reply


def test_greedy_replies_in_a_batch_of_eight_are_token_for_token_the_replies_alone(chat: LocalChat) -> None:
    requests = [ask(q, max_tokens=24 + 4 * i) for i, q in enumerate(QUESTIONS)]
    alone = [chat.complete(r) for r in requests]
    steps_before = chat.engine.stats().steps
    together = chat.complete_batch(requests)
    steps = chat.engine.stats().steps - steps_before
    for one, batched in zip(alone, together, strict=True):
        assert batched.text == one.text
        assert batched.completion_tokens == one.completion_tokens
        assert batched.finish_reason == one.finish_reason
    # Decoded together: about as many steps as the longest reply, not the sum of all of them.
    assert steps <= max(r.completion_tokens for r in alone) + 2
    assert sum(r.completion_tokens for r in alone) > 3 * steps


def test_a_short_reply_started_later_finishes_before_a_long_one(chat: LocalChat) -> None:
    long, short = Recorder(), Recorder()
    chat.start(ask("Write a long story about a fisherman in Madagascar.", max_tokens=160), long)
    while not long.pieces:  # the long reply is under way
        time.sleep(0.005)
    chat.start(ask("Say hello.", max_tokens=4), short)
    short_reply, long_reply = short.wait(), long.wait()
    assert short.finished_at < long.finished_at
    assert long_reply.completion_tokens > 40 and short_reply.completion_tokens <= 4
    # The pieces interleave: the long reply kept streaming while the short one was answered.
    assert any(short.piece_times[0] < t < short.finished_at for t in long.piece_times)


def test_cancelling_one_stream_leaves_the_others_as_they_are(chat: LocalChat) -> None:
    requests = [ask(q, max_tokens=40) for q in QUESTIONS[:3]]
    alone = [chat.complete(r) for r in requests]
    recorders = [Recorder() for _ in requests]
    started = [chat.start(r, rec) for r, rec in zip(requests, recorders, strict=True)]
    while not recorders[1].pieces:
        time.sleep(0.001)
    started[1].cancel()
    replies = [rec.wait() for rec in recorders]
    assert replies[1].finish_reason == "cancelled"
    assert replies[1].completion_tokens < alone[1].completion_tokens
    for i in (0, 2):
        assert replies[i].text == alone[i].text
    assert chat.engine.stats().slots_busy == 0


def test_stop_strings_and_token_limits_apply_per_conversation(chat: LocalChat) -> None:
    free = chat.complete(ask(QUESTIONS[1], max_tokens=40))
    stop_word = free.text.split()[3]
    limited, stopped, untouched = chat.complete_batch(
        [
            ask(QUESTIONS[1], max_tokens=5),
            ask(QUESTIONS[1], max_tokens=40, stop=(stop_word,)),
            ask(QUESTIONS[1], max_tokens=40),
        ]
    )
    assert limited.completion_tokens == 5 and limited.finish_reason == "length"
    assert stop_word not in stopped.text and free.text.startswith(stopped.text)
    assert stopped.finish_reason == "stop"
    assert untouched.text == free.text and untouched.finish_reason == free.finish_reason


def test_ignoring_the_end_token_applies_to_its_own_generation_only(chat: LocalChat) -> None:
    """``Sampling.ignore_eos`` (as llama.cpp's server takes it per request): that generation runs to
    its ``max_tokens``, greedy or sampled, while the one decoded beside it ends where it would."""
    request = chat.defaults.resolve(ask("Say hello.", max_tokens=120))
    free = chat.complete(request)
    assert free.finish_reason == "stop" and free.completion_tokens < 120  # the model ends it by itself
    tokens, _ = chat.prompt(request)
    results: dict[str, GenerationResult | Exception] = {}
    all_ended = threading.Event()

    def collect(name: str) -> Callable[[object], None]:
        def sink(event: object) -> None:  # on the engine's thread
            if isinstance(event, Finished | Failed):
                results[name] = event.result if isinstance(event, Finished) else event.error
                if len(results) == 3:
                    all_ended.set()

        return sink

    for name, sampling in (
        ("plain", Sampling(0.0, 1.0)),
        ("greedy", Sampling(0.0, 1.0, ignore_eos=True)),
        ("sampled", Sampling(0.8, 0.95, seed=3, ignore_eos=True)),
    ):
        chat.engine.submit(GenerationRequest(tokens, 120, sampling, pieces=False), collect(name))
    assert all_ended.wait(120), results
    assert all(isinstance(result, GenerationResult) for result in results.values()), results
    assert (results["plain"].finish_reason, results["plain"].text.strip()) == ("stop", free.text)
    for name in ("greedy", "sampled"):
        assert (results[name].finish_reason, results[name].completion_tokens) == ("length", 120)
    assert results["greedy"].text.strip().startswith(free.text)


def test_a_stop_string_split_across_tokens_is_never_streamed(chat: LocalChat) -> None:
    free = chat.complete(ask(QUESTIONS[1], max_tokens=40)).text
    stop = free[10:16]  # six characters that likely straddle tokens
    streamed = "".join(chat.stream(ask(QUESTIONS[1], max_tokens=40, stop=(stop,))))
    assert stop not in streamed
    assert streamed.strip() == free[: free.index(stop)].strip()


def test_seeded_sampling_does_not_leak_between_conversations(chat: LocalChat) -> None:
    def sampled(seed: int, temperature: float = 1.0, top_p: float = 0.9) -> ChatRequest:
        request = ask(QUESTIONS[2], max_tokens=24)
        return ChatRequest(request.messages, max_tokens=24, temperature=temperature, top_p=top_p, seed=seed)

    alone = [chat.complete(sampled(seed)) for seed in (1, 2, 3)]
    mixed = chat.complete_batch([sampled(1), ask(QUESTIONS[0]), sampled(2), sampled(7, 1.5, 0.5), sampled(3)])
    assert [mixed[0].text, mixed[2].text, mixed[4].text] == [r.text for r in alone]
    assert len({r.text for r in alone}) > 1  # the seeds do give different replies


def test_the_system_prompt_is_evaluated_once_and_every_request_starts_from_it(embedded_dir: Path) -> None:
    role = LocalChat(embedded_dir / "chat" / "model.gguf", n_ctx=512, slots=4, batch_tokens=128)
    try:
        prefix = len(role.shared_prefix())
        assert prefix > 40
        assert role.engine.stats().prompt_tokens_evaluated == prefix  # once, then copied to the 4 slots
        replies = role.complete_batch([ask(q, max_tokens=4) for q in QUESTIONS[:4]])
        assert all(r.cached_tokens >= prefix for r in replies)
        stats = role.engine.stats()
        assert stats.prompt_tokens_evaluated == prefix + sum(r.prompt_tokens - r.cached_tokens for r in replies)
    finally:
        role.close()


def test_a_sessions_next_turn_reuses_its_previous_turn(chat: LocalChat) -> None:
    first = ask("My name is Hery. Remember it.", max_tokens=16)
    reply = chat.complete(first)
    history = [*first.messages, ChatMessage("assistant", reply.text), ChatMessage("user", "What is my name?")]
    # Other conversations in between take other slots: the least recently used go first.
    chat.complete_batch([ask(q, max_tokens=4) for q in QUESTIONS[:3]])
    second = chat.complete(ChatRequest(history, max_tokens=16, temperature=0.0))
    assert second.cached_tokens >= reply.prompt_tokens  # the first turn's prompt is not read again
    assert second.prompt_tokens - second.cached_tokens < 30


def test_a_prompt_larger_than_a_slot_is_trimmed_never_refused(chat: LocalChat) -> None:
    huge = "Malagasy rice fields stretch across the highlands. " * 300  # about 3,000 tokens, a slot holds 1,024
    reply = chat.complete(ChatRequest([ChatMessage("user", huge + "What grows there?")], max_tokens=8))
    assert reply.finish_reason in ("stop", "length") and reply.prompt_tokens + 8 <= chat.n_ctx
    history = []
    for turn in range(30):
        history += [ChatMessage("user", f"Question {turn}: " + "tell me more " * 10), ChatMessage("assistant", "Yes.")]
    long = chat.complete(ChatRequest([*history, ChatMessage("user", "And now?")], max_tokens=64, temperature=0.0))
    assert long.trimmed_messages > 0 and long.prompt_tokens + 64 <= chat.n_ctx


def test_a_full_queue_refuses_at_once_and_closing_ends_everything(embedded_dir: Path) -> None:
    role = LocalChat(embedded_dir / "chat" / "model.gguf", n_ctx=256, slots=1, batch_tokens=64, max_queued=2)
    recorders = [Recorder() for _ in range(3)]
    try:
        # The first in the one slot before the next two fill the queue: handed over together, the
        # third could find the first still queued (seen once in a fresh clone's run).
        role.start(ask("Count from one to a hundred.", max_tokens=200), recorders[0])
        while role.engine.stats().slots_busy == 0:
            time.sleep(0.001)
        for rec in recorders[1:]:
            role.start(ask("Count from one to a hundred.", max_tokens=200), rec)
        with pytest.raises(EngineBusyError, match="Exceeds maximum queue size"):
            role.start(ask("One more?"), Recorder())
    finally:
        role.close()
    for rec in recorders:
        assert rec.done.wait(10)
        assert isinstance(rec.error, EngineStoppedError)
    with pytest.raises(EngineStoppedError):
        role.engine.submit(GenerationRequest((1, 2, 3), 4, Sampling(0.0, 1.0)), lambda event: None)


def test_an_outside_cancellation_check_stops_the_generation(chat: LocalChat) -> None:
    gone = threading.Event()
    recorder = Recorder()
    chat.start(ask("Write a long story about a lemur.", max_tokens=300), recorder, is_cancelled=gone.is_set)
    while len(recorder.pieces) < 3:
        time.sleep(0.001)
    gone.set()
    reply = recorder.wait(10)
    assert reply.finish_reason == "cancelled" and reply.completion_tokens < 300


def test_the_blocking_stream_cancels_when_its_reader_stops(chat: LocalChat) -> None:
    stream = chat.stream(ask("Write a long story about a baobab.", max_tokens=300))
    next(stream)
    stream.close()
    deadline = time.monotonic() + 10
    while chat.engine.stats().slots_busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert chat.engine.stats().slots_busy == 0


def test_a_paced_stream_sends_its_first_piece_at_once_then_joined_pieces(chat: LocalChat) -> None:
    """``chat_stream`` as the servers run it: responses at most one per interval, no text lost."""
    from milo_voice.serving.tensor_io import ChatService

    whole = Recorder()
    asked = time.perf_counter()
    chat.start(ask(QUESTIONS[2], max_tokens=60), whole)
    expected = whole.wait()
    per_token_s = (time.perf_counter() - asked) / expected.completion_tokens
    responses: list[tuple[float, bytes, bytes, bool]] = []
    ended = threading.Event()

    def emit(outputs: object, final: bool) -> None:
        assert isinstance(outputs, dict), outputs
        responses.append((time.perf_counter(), outputs["token"][0], outputs["finish_reason"][0], final))
        if final:
            ended.set()

    # About four tokens' time on this machine (a loaded one decodes several times slower): each
    # interval has pieces to join, whatever the machine's speed.
    interval = max(0.05, 4 * per_token_s)
    service = ChatService(chat, stream_interval_s=interval)
    inputs = codec.pack_request(tensors.CHAT_STREAM, ask(QUESTIONS[2], max_tokens=60))
    started = time.perf_counter()
    service.start(inputs, emit, None, streaming=True)
    assert ended.wait(120)
    texts = [token.decode() for _, token, _, _ in responses]
    assert "".join(texts) == expected.text
    assert responses[-1][2:] == (expected.finish_reason.encode(), True)
    assert not any(final for *_, final in responses[:-1])
    assert responses[0][1] and len(responses) < expected.completion_tokens / 2  # pieces were joined
    times = [at for at, *_ in responses[:-1]]
    assert all(b - a >= interval * 0.99 for a, b in itertools.pairwise(times))
    assert times[0] - started < expected.completion_tokens * interval / 4  # the first piece did not wait


def test_while_others_reply_a_new_prompt_is_read_a_few_tokens_a_step(embedded_dir: Path) -> None:
    """``step_prompt_tokens``: a prompt that arrives while a reply streams is read in chunks,
    and the streaming reply gets a token at every one of those steps."""
    model = embedded_dir / "chat" / "model.gguf"
    role = FixedLengthChat(model, n_ctx=1024, slots=2, batch_tokens=256, step_prompt_tokens=4)
    try:
        streaming = Recorder()
        role.start(ask(QUESTIONS[0], max_tokens=200), streaming)
        while not streaming.pieces:
            time.sleep(0.01)
        newcomer = Recorder()
        question = " ".join(QUESTIONS)  # about 60 tokens beyond the shared system prompt
        before = len(streaming.pieces)
        role.start(ask(question, max_tokens=4), newcomer)
        reply = newcomer.wait()
        during = sum(before <= i and t < newcomer.piece_times[0] for i, t in enumerate(streaming.piece_times))
        read = reply.prompt_tokens - reply.cached_tokens
        assert read > 40
        # The newcomer's prompt took read / 4 steps, each giving the stream a token (its pieces
        # hold one token or more: a piece may wait for the rest of a character). Read in one step,
        # it would have let the stream send one or two.
        assert during >= read // 8
        assert streaming.wait().completion_tokens == 200
    finally:
        role.close()


def test_a_cancel_that_arrives_before_its_request_stops_it_when_it_comes(chat: LocalChat) -> None:
    """chat_cancel sent while the request still waits in Triton's queue: nothing runs yet, so the
    id is kept, and the request ends as cancelled when it starts, before any compute."""
    from milo_voice.serving.tensor_io import ChatService

    service = ChatService(chat)
    assert service.cancel("late-arrival") is False  # nothing running under that id yet
    ended: list[ChatReply] = []
    done = threading.Event()

    def emit(outputs: object, final: bool) -> None:
        assert isinstance(outputs, dict) and final
        ended.append(codec.unpack_result(tensors.CHAT, outputs))
        done.set()

    request = ask(QUESTIONS[1], max_tokens=200, request_id="late-arrival")
    service.start(codec.pack_request(tensors.CHAT, request), emit, None, streaming=False)
    assert done.wait(60)
    assert ended[0].finish_reason == "cancelled" and ended[0].completion_tokens == 0


def test_a_model_file_that_is_not_there_is_named_as_missing(tmp_path: Path) -> None:
    from milo_voice.roles.llama_engine import LlamaEngine

    with pytest.raises(ValueError, match=r"model\.gguf \(no such file\)"):
        LlamaEngine(tmp_path / "model.gguf", slots=1, slot_context=64, batch_tokens=8)
