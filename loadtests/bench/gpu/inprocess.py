"""Phase ``inprocess``: the role classes called directly on the GPU."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtests import payloads
from loadtests.bench.batching import translate_body, tts_text
from loadtests.bench.gpu.common import (
    CHAT_CONCURRENCY,
    CHAT_TOKENS,
    STT_TOKENS,
    TRANSLATE_TOKENS,
    batch_row,
    gpu_memory,
    save,
    timed,
    timed_calls,
)
from loadtests.bench.gpu.tune import phase_tune


def _clip(kind: str = "long") -> Any:
    import io

    import soundfile as sf

    audio, _ = sf.read(io.BytesIO(payloads.clip_wav(kind)), dtype="float32")
    return audio


def _memory_used_mib() -> float:
    import torch

    if not torch.cuda.is_available():  # a dry run on a CPU
        return 0.0
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


# The batch sizes STT is measured at in process: one request, the registry's old batch, its batch now.
STT_BATCHES = (1, 8, 32)


def _stt_role(
    path: Path, encoder: str, decoder: str, device: str = "cuda", compute_type: str = "float16"
) -> tuple[Any, int]:
    """The role with ``encoder`` and ``decoder`` (ctranslate2 or torch), decoding the benchmark's
    fixed tokens a window, and the device memory its load took (MiB)."""
    from loadtests.bench.fixed_lengths.stt import FixedLengthSpeechToText
    from milo_voice.roles.stt import SttOptions

    before = _memory_used_mib()
    options = SttOptions(compute_type=compute_type, max_new_tokens=STT_TOKENS, encoder=encoder, decoder=decoder)  # type: ignore[arg-type]
    role = FixedLengthSpeechToText(str(path), device=device, options=options)
    return role, round(_memory_used_mib() - before)


def stt_inprocess(path: Path) -> dict[str, Any]:
    """The reference (CTranslate2 alone, features ready) and the role in three settings, side by side:
    all CTranslate2, the encoder in torch, encoder and decoder in torch."""
    import ctranslate2
    import numpy as np
    import torch

    from contract.records import SttRequest

    stt, memory = _stt_role(path, "ctranslate2", "ctranslate2")
    rows: dict[str, Any] = {"memory_mib": memory}
    fast, rows["torch_encoder_memory_mib"] = _stt_role(path, "torch", "ctranslate2")
    fastest, rows["torch_decoder_memory_mib"] = _stt_role(path, "torch", "torch")
    fast_backend, fastest_backend = fast.backend, fastest.backend
    audio = _clip("long")
    features = np.ascontiguousarray(stt.features.one(audio))
    suppress = [-1, stt.tokenizer.eot]
    for batch in STT_BATCHES:
        requests = [SttRequest(audio, "fr")] * batch
        tokens = stt.transcribe_batch(requests)[0].tokens
        stacked_np = np.stack([features] * batch)
        stacked = ctranslate2.StorageView.from_array(stacked_np)
        stacked_gpu = torch.from_numpy(stacked_np).cuda()
        states = fast_backend.encoder(stacked_gpu)
        states_view = ctranslate2.StorageView.from_array(states)
        torch.cuda.synchronize()
        # Without timestamps (<|notimestamps|> in the prompt) CTranslate2 skips its timestamp rules.
        prompts = {
            "model": [stt.prompts("fr")] * batch,
            "no_timestamps": [[*stt.prompts("fr"), stt.tokenizer.no_timestamps]] * batch,
        }

        def decode(prompt: list[list[int]], stacked: Any = stacked) -> None:
            encoded = stt.model.encode(stacked, to_cpu=False)
            stt.model.generate(encoded, prompt, beam_size=1, max_length=2 * STT_TOKENS, suppress_tokens=suppress)

        def ct2_encode(stacked: Any = stacked) -> None:
            stt.model.encode(stacked, to_cpu=False)

        def torch_encode(stacked_gpu: Any = stacked_gpu) -> None:
            fast_backend.encoder(stacked_gpu)
            torch.cuda.synchronize()

        # Decoding alone, from the same ready encoder output (the torch encoder's), timestamps on.
        def ct2_decode(prompt: list[list[int]] = prompts["model"], states_view: Any = states_view) -> None:
            stt.model.generate(states_view, prompt, beam_size=1, max_length=2 * STT_TOKENS, suppress_tokens=suppress)

        def torch_decode(prompt: list[list[int]] = prompts["model"], states: Any = states) -> None:
            fastest_backend.decoder.start(states).generate(prompt, STT_TOKENS, suppress)

        repeats = 10 if batch == 1 else 5
        role_ms = timed(lambda requests=requests: stt.transcribe_batch(requests), repeats)
        role_torch_encoder = timed(lambda requests=requests: fast.transcribe_batch(requests), repeats)
        role_torch = timed(lambda requests=requests: fastest.transcribe_batch(requests), repeats)
        model = timed(functools.partial(decode, prompts["model"]), repeats)
        rows[f"batch{batch}"] = {
            "tokens_per_window": tokens,
            "role_ms": round(role_ms * 1000, 1),
            "role_torch_encoder_ms": round(role_torch_encoder * 1000, 1),
            "role_torch_ms": round(role_torch * 1000, 1),
            "model_ms": round(model * 1000, 1),
            "role_clips_s": round(batch / role_ms, 1),
            "role_torch_encoder_clips_s": round(batch / role_torch_encoder, 1),
            "role_torch_clips_s": round(batch / role_torch, 1),
            "model_clips_s": round(batch / model, 1),
            "ct2_encoder_ms": round(timed(ct2_encode, repeats) * 1000, 1),
            "torch_encoder_ms": round(timed(torch_encode, repeats) * 1000, 1),
            "ct2_decode_ms": round(timed(ct2_decode, repeats) * 1000, 1),
            "torch_decode_ms": round(timed(torch_decode, repeats) * 1000, 1),
        }
        no_timestamps = timed(functools.partial(decode, prompts["no_timestamps"]), repeats)
        rows[f"batch{batch}"]["no_timestamps_ms"] = round(no_timestamps * 1000, 1)
        if batch == 1:
            rows["encoder_agreement"] = _encoder_agreement(stt, fast, stacked, stacked_gpu, requests)
            rows["decoder_agreement"] = _decoder_agreement(fast, fastest, requests)
    return rows


def stt_reference(path: Path, device: str = "cuda", compute_type: str = "float16") -> dict[str, Any]:
    """The role as a GPU host runs it (encoder and decoder in torch), alone in the process as a
    served model is, by batch size: of ``stt_inprocess``'s rows, only those the served STT is set
    beside (``role_torch_clips_s``), without the engines it is compared with."""
    from contract.records import SttRequest

    role, memory = _stt_role(path, "torch", "torch", device, compute_type)
    rows: dict[str, Any] = {"torch_decoder_memory_mib": memory}
    audio = _clip("long")
    for batch in STT_BATCHES:
        requests = [SttRequest(audio, "fr")] * batch
        tokens = role.transcribe_batch(requests)[0].tokens
        seconds = timed(lambda requests=requests: role.transcribe_batch(requests), 10 if batch == 1 else 5)
        rows[f"batch{batch}"] = {
            "tokens_per_window": tokens,
            "role_torch_ms": round(seconds * 1000, 1),
            "role_torch_clips_s": round(batch / seconds, 1),
        }
    return rows


def _decoder_agreement(reference: Any, torch_decoder: Any, requests: list[Any]) -> dict[str, Any]:
    """The torch decoder's float16 transcript against CTranslate2's, from the same torch encoder."""
    expected, got = reference.transcribe_batch(requests)[0], torch_decoder.transcribe_batch(requests)[0]
    return {
        "same_text": expected.text == got.text,
        "same_segments": [(s.start, s.end) for s in expected.segments] == [(s.start, s.end) for s in got.segments],
        "confidence_ct2": expected.confidence,
        "confidence_torch": got.confidence,
        "text_ct2": expected.text[:200],
        "text_torch": got.text[:200],
    }


def _encoder_agreement(stt: Any, fast: Any, stacked: Any, stacked_gpu: Any, requests: list[Any]) -> dict[str, Any]:
    """How far the torch encoder's float16 output is from CTranslate2's, and what that does to decoding."""
    import numpy as np
    import torch

    reference = torch.as_tensor(stt.model.encode(stacked, to_cpu=False), device="cuda").float()
    ours = fast.backend.encoder(stacked_gpu).float()  # type: ignore[union-attr]
    with_ct2, with_torch = stt.transcribe_batch(requests)[0], fast.transcribe_batch(requests)[0]
    first = [s.text for s in with_ct2.segments], [s.text for s in with_torch.segments]
    return {
        "max_abs_diff": round(float((reference - ours).abs().max()), 4),
        "max_abs_value": round(float(reference.abs().max()), 2),
        "cosine": round(float(torch.nn.functional.cosine_similarity(reference.flatten(), ours.flatten(), dim=0)), 6),
        "same_text": first[0] == first[1],
        "text_ct2": " ".join(first[0])[:200],
        "text_torch": " ".join(first[1])[:200],
        "finite": bool(np.isfinite(ours.cpu().numpy()).all()),
    }


def tts_inprocess(path: Path) -> dict[str, Any]:
    from contract.records import TtsRequest
    from milo_voice.roles.tts import TextToSpeech

    before = _memory_used_mib()
    voices = {"mg": path / "mms-tts-mlg", "fr": path / "mms-tts-fra"}
    tts = TextToSpeech(voices, device="cuda")
    rows: dict[str, Any] = {"memory_mib": round(_memory_used_mib() - before), "batches": {}}
    for batch in (1, 2, 4, 8, 16):
        # The texts the served load sends, in its order (short and long in turn).
        requests = [TtsRequest(tts_text(n), "mg") for n in range(batch)]
        audio_s = sum(s.duration for s in tts.synthesize_batch(requests))
        seconds = timed(lambda requests=requests: tts.synthesize_batch(requests), 5)
        rows["batches"][batch] = {
            "ms": round(seconds * 1000, 1),
            "requests_s": round(batch / seconds, 1),
            "audio_s_per_s": round(audio_s / seconds, 1),
            "rtf": round(seconds / audio_s, 4),
        }
    return rows


# Each batch size is called for at least this long (and 5 times): a lease's reference is the median
# of many calls, not of 5, and its spread is kept beside it.
TRANSLATE_BATCH_SECONDS = 2.0
TRANSLATE_ENGINES = (("ctranslate2", "ctranslate2_batches"), ("torch", "torch_batches"), ("auto", "batches"))
REFERENCE_ENGINES = (("auto", "batches"),)  # the served phase's reference alone
AGREEMENT = ("ctranslate2", "torch")  # the engines whose answers are compared ("auto" is the two)

# Clients kept in flight in process, and decoding steps between two looks at what ended: what the
# served step-level batching does without the server (milo_voice/serving/stepwise.py).
STEPWISE_LEVELS = ((64, 1), (64, 4), (128, 1), (128, 4))
STEPWISE_SENTENCES = 128  # two-sentence texts of 64 clients: what the translate-steps overlays hold
# Requests in flight through the served handler, and how long after an answer its client's next
# request is handed over: none, then about what a request spent outside the search when served
# (Triton alone, then through the facade: docs/benchmarks.md, section 4), each time drawn between
# half and one and a half times that. With none, every sentence of a fixed length joins and ends
# at the same step as the others; served, they join a few at a step. The drawn round trips spread
# them out the same way, so that the handler alone shows what that costs the search.
HANDLER_LEVELS = ((64, 0.0), (64, 0.015), (64, 0.030))
# Measured again with the search's rules launched op by op around the decoder's graph, as before
# each whole step was recorded as one CUDA graph (``gpu_search_graphs = false``): the two side by side.
OP_BY_OP_LEVELS = ((64, 1, None), (64, None, 0.015))
# Each level of the loop: requests in flight, steps between two looks (None: through the served
# handler), the clients' round trip (seconds), and whether the search's rules run op by op.
StepLevel = tuple[int, int | None, float | None, bool]
STEP_LEVELS: tuple[StepLevel, ...] = (
    *((c, s, None, False) for c, s in STEPWISE_LEVELS),
    *((c, None, b, False) for c, b in HANDLER_LEVELS),
    *((c, s, b, True) for c, s, b in OP_BY_OP_LEVELS),
)
REFERENCE_STEP_LEVELS: tuple[StepLevel, ...] = ((64, 1, None, False),)  # what a served level is set beside
LOOP_SECONDS = 10.0  # each level of the loop counted for this long, after 2 s of warm-up


def translate_inprocess(
    path: Path,
    device: str = "cuda",
    compute_type: str = "float16",
    batch_seconds: float = TRANSLATE_BATCH_SECONDS,
    references: bool = False,
    loop_seconds: float = LOOP_SECONDS,
) -> dict[str, Any]:
    """The role's engines in ``compute_type`` (float16: the registry's GPU compute type), beam 2,
    one after the other, each alone in the process as a served model is: CTranslate2 (``ctranslate2_batches``),
    the torch engine (``torch_batches``), and the two as "auto" picks them on a GPU (``batches``:
    the served phase's reference). With ``references``, only what the served levels are set
    beside: ``batches`` and the step-level loop of 64 requests in flight."""
    from contract.records import TranslateRequest
    from loadtests.bench.fixed_lengths.translate import FixedLengthTranslator

    rows: dict[str, Any] = {}
    # What the engines decide, on the benchmark's texts (seeded weights: the texts mean nothing, but
    # the searches must agree but for float16's rounding).
    texts = [TranslateRequest(t, s, g) for s, g, t in [*payloads.TRANSLATE_SHORT, *payloads.TRANSLATE_LONG]]
    answers: dict[str, list[Any]] = {}
    for engine, key in REFERENCE_ENGINES if references else TRANSLATE_ENGINES:
        before = _memory_used_mib()
        translator = FixedLengthTranslator(
            path, device=device, compute_type=compute_type, max_decoding_length=TRANSLATE_TOKENS, engine=engine
        )
        rows[f"{engine}_memory_mib"] = round(_memory_used_mib() - before)
        if (kernels := translator.step_kernels) is not None:  # the ways its steps run, chosen at load
            rows[f"{engine}_chosen_at_load"] = asdict(kernels)
        rows[key] = {}
        for batch in (1, 4, 8, 16, 32, 64):
            # What the served load sends: requests of two pieces each, texts never sent before.
            requests = [TranslateRequest(**translate_body(n)) for n in range(batch)]
            calls = timed_calls(lambda requests=requests, t=translator: t.translate_batch(requests), 5, batch_seconds)
            rows[key][batch] = batch_row(batch, calls)
        if engine in AGREEMENT:
            answers[engine] = translator.translate_batch(texts)
        del translator
        _release_gpu_memory()
    if not references:
        rows["agreement"] = _engines_agreement(answers["ctranslate2"], answers["torch"])
    levels = REFERENCE_STEP_LEVELS if references else STEP_LEVELS
    rows["stepwise"] = translate_stepwise(
        path, texts, answers.get("torch"), device, compute_type, levels=levels, seconds=loop_seconds
    )
    return rows


def _engines_agreement(ctranslate2: list[Any], torch: list[Any]) -> dict[str, Any]:
    """How many texts the two engines' searches answer the same, and how far their scores differ."""
    from contract.records import Translation

    pairs = list(zip(ctranslate2, torch, strict=True))
    both = [(a, b) for a, b in pairs if isinstance(a, Translation) and isinstance(b, Translation)]
    return {
        "same_text": sum(a.text == b.text for a, b in both),
        "of": len(pairs),
        "score_diff_max": max((abs(a.score - b.score) for a, b in both), default=0.0),
    }


def _release_gpu_memory() -> None:
    """What an engine let go of returned to the device before the next one loads."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def translate_stepwise(
    path: Path,
    requests: list[Any],
    batch_answers: list[Any] | None,
    device: str = "cuda",
    compute_type: str = "float16",
    levels: tuple[StepLevel, ...] = STEP_LEVELS,
    seconds: float = LOOP_SECONDS,
) -> dict[str, Any]:
    """The torch engine's step-level batching in process, at each of ``levels``: ``clients``
    requests always in flight, a new one submitted as each ends, ``steps`` decoding steps between
    two looks (``requests_s`` over ``seconds`` after 2 s of warm-up); and, given the same engine's
    batch answers, what it answers for requests joining a search at different steps against
    them (``agreement``)."""
    from contract.records import Translation
    from loadtests.bench.fixed_lengths.translate import FixedLengthTranslator

    translator = FixedLengthTranslator(
        path, device=device, compute_type=compute_type, max_decoding_length=TRANSLATE_TOKENS, engine="torch",
        search_sentences=STEPWISE_SENTENCES,
    )  # fmt: skip
    kernels = translator.step_kernels  # none on a CPU: nothing is chosen there
    rows: dict[str, Any] = {"chosen_at_load": asdict(kernels) if kernels is not None else None}
    graphs = translator._torch.search_graphs  # what the engine's searches (translator.stepwise()) record
    for clients, steps, back_s, op_by_op in levels:
        translator._torch.search_graphs = graphs and not op_by_op
        suffix = ", op by op" if op_by_op else ""
        if steps is not None:
            loop = _closed_loop(translator, clients, steps, warmup_s=2.0, seconds=seconds)
            rows[f"{clients}x{steps}{suffix}"] = {"clients": clients, "steps": steps, "op_by_op": op_by_op, **loop}
            continue
        name = f"handler {clients}" + (f", {back_s * 1000:g} ms back" if back_s else "") + suffix
        rows[name] = {
            "clients": clients,
            "op_by_op": op_by_op,
            "back_ms": (back_s or 0.0) * 1000,
            **_handler_loop(translator, clients, warmup_s=2.0, seconds=seconds, back_s=back_s or 0.0),
        }
    translator._torch.search_graphs = graphs
    if batch_answers is None:
        return rows
    stepwise = translator.stepwise()
    joined: dict[int, Any] = {}
    for key, request in enumerate(requests):  # each joins the search one step after the one before
        stepwise.submit(key, request)
        joined.update(stepwise.advance(1))
    while stepwise.busy:
        joined.update(stepwise.advance(4))
    same = [
        isinstance(a, Translation) and isinstance(b, Translation) and a.text == b.text
        for a, b in zip(batch_answers, [joined[k] for k in range(len(requests))], strict=True)
    ]
    rows["agreement"] = {"same_text": sum(same), "of": len(same)}
    return rows


def _closed_loop(translator: Any, clients: int, steps: int, warmup_s: float, seconds: float) -> dict[str, float]:
    """Requests a second that ``clients`` always in flight get answered, counted after ``warmup_s``;
    over the same window, the search's sentences a step (the last step of each look) and
    milliseconds a step, as the served levels print them from Triton's metrics."""
    from contract.records import TranslateRequest

    stepwise = translator.stepwise()
    sent = answered = looks = sentences = 0
    stepping_s = 0.0
    for sent in range(clients):
        stepwise.submit(sent, TranslateRequest(**translate_body(sent)))
    measured_from = time.perf_counter() + warmup_s
    done: dict[Any, Any] = {}
    while (now := time.perf_counter()) < measured_from + seconds:
        # As the served role's thread does: a step queued behind the one decoding, and a new
        # request for each answer submitted and admitted while they decode.
        stepwise.launch_ahead()
        for _ in done:
            sent += 1
            stepwise.submit(sent, TranslateRequest(**translate_body(sent)))
        stepwise.admit()
        done = {**stepwise.collect(), **stepwise.advance(steps - 1)}
        if now >= measured_from:
            looks += 1
            stepping_s += time.perf_counter() - now
            sentences += stepwise.last_step_sentences
            answered += len(done)
    return {
        "requests_s": round(answered / seconds, 1),
        "sentences_per_step": round(sentences / max(looks, 1), 1),
        "step_ms": round(1000 * stepping_s / max(looks * steps, 1), 3),
    }


class _WindowSteps:
    """The handler's observer: the search's sentences and seconds of each step inside the window."""

    def __init__(self) -> None:
        self.counting = False
        self.steps = self.sentences = 0
        self.seconds = 0.0

    def step(self, sentences: int, seconds: float) -> None:
        if self.counting:
            self.steps += 1
            self.sentences += sentences
            self.seconds += seconds

    def flush(self) -> None:
        pass


# The search's parts whose host time each step is counted in the handler's loop: on a GPU, the
# time to launch them (the whole step, admission included; the sentences admitted: their encoder
# pass; the decoder's step; the self-attention cache reordered to the beams kept; the rows of ended
# sentences freed). A step recorded as one graph calls neither the decoder's step nor the reorder.
SEARCH_PARTS = {"launch": ("search", "launch"), "admit": ("model", "admit"), "decoder": ("model", "step"),
                "reorder": ("model", "reorder"), "leave": ("search", "_leave")}  # fmt: skip


@contextlib.contextmanager
def _search_parts(counting: Callable[[], bool]) -> Iterator[dict[str, float]]:
    """Host seconds spent in each of ``SEARCH_PARTS`` while ``counting()``, every search of the
    process included; the classes are as they were on the way out."""
    from milo_voice.roles.nllb import model, search

    owners = {"model": model.NllbModel, "search": search.BeamSearch}
    seconds = dict.fromkeys(SEARCH_PARTS, 0.0)
    originals = {part: getattr(owners[owner], name) for part, (owner, name) in SEARCH_PARTS.items()}

    def timing(part: str) -> Callable[..., Any]:
        original = originals[part]

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if counting():
                    seconds[part] += time.perf_counter() - started

        return wrapper

    try:
        for part, (owner, name) in SEARCH_PARTS.items():
            setattr(owners[owner], name, timing(part))
        yield seconds
    finally:
        for part, (owner, name) in SEARCH_PARTS.items():
            setattr(owners[owner], name, originals[part])


def _handler_loop(
    translator: Any, clients: int, warmup_s: float, seconds: float, back_s: float = 0.0
) -> dict[str, Any]:
    """``_closed_loop`` through the served role's own handler (``StepwiseHandler``: its thread, its
    inbox, the tensors in and out), with no server. A thread of its own hands each new request over,
    as Triton's execution does, for each answer the handler sends: at once, or after a client's
    round trip drawn between half and one and a half ``back_s``. Beside ``_closed_loop``, what the
    handler costs; beside the served level, what the server does. ``host_ms_a_step``: the host's
    time in each of ``SEARCH_PARTS``, a step."""
    import queue

    from contract import codec, tensors
    from contract.records import TranslateRequest
    from milo_voice.serving.stepwise import StepwiseHandler

    steps = _WindowSteps()
    handler = StepwiseHandler(tensors.TRANSLATE, translator.stepwise(), steps)
    answers: queue.SimpleQueue[bool] = queue.SimpleQueue()

    def emit(outputs: Any, final: bool) -> None:
        answers.put(not isinstance(outputs, Exception))

    def send(n: int) -> None:
        handler.start(codec.pack_request(tensors.TRANSLATE, TranslateRequest(**translate_body(n))), emit)

    try:
        with _search_parts(lambda: steps.counting) as parts:
            answered, failed = _clients(clients, warmup_s, seconds, back_s, steps, answers, send)
    finally:  # what the handler still holds is answered StoppedError, and not counted
        handler.close()
    step_count = max(steps.steps, 1)
    return {
        "requests_s": round(answered / seconds, 1),
        "failed": failed,
        "sentences_per_step": round(steps.sentences / step_count, 1),
        "step_ms": round(1000 * steps.seconds / step_count, 3),
        "host_ms_a_step": {part: round(1000 * spent / step_count, 3) for part, spent in parts.items()},
    }


def _clients(
    clients: int,
    warmup_s: float,
    seconds: float,
    back_s: float,
    steps: _WindowSteps,
    answers: Any,
    send: Callable[[int], None],
) -> tuple[int, int]:
    """``_handler_loop``'s clients: each hands its next request over once answered, after its
    round trip; the answers inside the window after ``warmup_s``, and those that failed."""
    import heapq
    import queue
    import random

    start = time.perf_counter() + warmup_s
    answered = failed = 0
    due: list[float] = []  # when each answered client's next request is handed over
    draws = random.Random(1234)  # the same round trips in every run
    last_answer = time.perf_counter()
    for sent in range(clients):
        send(sent)
    while (now := time.perf_counter()) < start + seconds:
        steps.counting = now >= start
        while due and due[0] <= now:
            heapq.heappop(due)
            sent += 1
            send(sent)
        try:
            ok = answers.get(timeout=max(due[0] - now, 0.0) if due else 1.0)
        except queue.Empty:
            if time.perf_counter() - last_answer > 1.0:
                raise RuntimeError("the handler answered nothing for a second") from None
            continue
        last_answer = time.perf_counter()
        if steps.counting:
            answered += ok
            failed += not ok
        heapq.heappush(due, last_answer + back_s * draws.uniform(0.5, 1.5))
    steps.counting = False
    return answered, failed


def chat_inprocess(path: Path) -> dict[str, Any]:
    """The chat role alone on the GPU: one reply, then conversations decoded together (continuous batching)."""
    from contract.records import ChatMessage, ChatRequest
    from loadtests.bench.fixed_lengths.chat import FixedLengthChat

    request = ChatRequest([ChatMessage("user", payloads.CHAT_SCRIPT[2])], max_tokens=CHAT_TOKENS)
    rows: dict[str, Any] = {"concurrent": {}}
    before = _memory_used_mib()
    chat = FixedLengthChat(path, n_ctx=4096, slots=max(CHAT_CONCURRENCY), n_gpu_layers=-1)
    try:
        rows["memory_mib"] = round(_memory_used_mib() - before)
        reply = chat.complete(request)
        seconds = timed(lambda: chat.complete(request), 5)
        rows["single"] = {
            "ms": round(seconds * 1000, 1),
            "completion_tokens": reply.completion_tokens,
            "prompt_tokens": reply.prompt_tokens,
            "tokens_s": round(reply.completion_tokens / seconds, 1),
        }
        for count in CHAT_CONCURRENCY:
            batch = [request] * count
            chat.complete_batch(batch)
            seconds = timed(lambda batch=batch: chat.complete_batch(batch), 3)
            rows["concurrent"][count] = {
                "tokens_s": round(count * reply.completion_tokens / seconds, 1),
                "ms_per_reply": round(seconds * 1000, 1),
            }
    finally:
        chat.close()
    return rows


def phase_inprocess(args: argparse.Namespace) -> None:
    import torch

    torch.cuda.init()
    models = args.work / "models" / "production"
    results: dict[str, Any] = {"gpu": gpu_memory()["gpu"], "references_only": args.references}
    only = [x for x in args.only.split(",") if x]
    large_v3 = args.work / "models-large-v3" / "production" / "stt"

    def stt() -> dict[str, Any]:
        if args.references:
            return {"large-v3-turbo": stt_reference(models / "stt")}
        rows = {"large-v3-turbo": stt_inprocess(models / "stt")}
        # Built unless `build --no-large-v3`: measured where it is there, whatever the other options.
        rows["large-v3"] = stt_inprocess(large_v3) if large_v3.is_dir() else {"skipped": "not built (--no-large-v3)"}
        return rows

    steps: dict[str, Callable[[], Any]] = {
        "stt": stt,
        "tts": lambda: tts_inprocess(models / "tts"),
        "translate": lambda: translate_inprocess(models / "translate", references=args.references),
        "chat": lambda: chat_inprocess(models / "chat" / "model.gguf"),
    }
    for name, step in steps.items():
        if only and name not in only:
            continue
        try:
            results[name] = step()
        except Exception as exc:  # one role failing must not lose the others' figures
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(name, json.dumps(results[name])[:2000], flush=True)
    previous = args.work / "results" / "inprocess.json"
    if only and previous.exists():
        results = {**json.loads(previous.read_text()), **results}
    save(args.work, "inprocess", results)
    phase_tune(args)
