"""Continuous batching on llama.cpp: many generations decoded together in one context.

One ``LlamaEngine`` owns a llama.cpp context whose KV cache is split into ``slots``
sequences (one stream each, ``kv_unified`` off, as llama.cpp's own server runs with
``--parallel``). A scheduler thread runs the loop:

- a submitted generation waits in a bounded queue until a slot is free, then takes the
  free slot whose cache shares the longest prefix with its prompt (a session's next
  turn finds its previous turn there; any prompt finds the shared system prompt), and
  only the rest of its prompt is evaluated;
- every step is one ``llama_decode`` over one token of each generating sequence plus
  chunks of the prompts being read, at most ``batch_tokens`` tokens in all, so a long
  prompt never stalls the others for more than a step; while sequences are generating,
  prompts get at most ``step_prompt_tokens`` of a step (chunked prefill): on a CPU a
  step's time grows with its tokens, and prompts that arrive together are then read
  over several steps instead of stalling every reply (and each other) for one long one;
- each sequence samples with its own settings (greedy rows in one vectorised argmax,
  the others through their own llama.cpp sampler chain with their own seed) and stops
  on its own end token, stop strings, token limit or the end of its slot;
- a cancelled or finished generation leaves at the next step and frees its slot; its
  cache stays in the slot for the next prompt that shares it.

The engine knows tokens, not chat: the chat role renders prompts and reads replies.
Results and text pieces go to a per-generation sink (a callable, invoked on the
scheduler thread: it must return at once), so threads, asyncio loops and Triton's
response senders all read the same engine.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as lc
import numpy as np

from milo_voice.roles.generation import (
    EngineObserver,
    Failed,
    Finished,
    GenerationRequest,
    GenerationResult,
    Sampling,
    Sink,
    TextPiece,
)

log = logging.getLogger(__name__)
# llama.cpp logs through llama-cpp-python's logger, which prints everything unless told otherwise.
logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)

# How often a generation's external cancellation check (a Triton request's is_cancelled,
# an IPC call) runs at most; the engine's own cancel() is seen at the very next step.
CANCEL_POLL_S = 0.05


class EngineBusyError(RuntimeError):
    """The engine's queue is full. The message matches Triton's own, so clients read both alike."""


class EngineStoppedError(RuntimeError):
    """The engine was closed before this generation finished."""


class DecodeError(RuntimeError):
    """llama.cpp failed to decode a step (out of memory, or the context cannot take the batch)."""


@dataclass
class EngineStats:
    """Counters since start; read them with ``LlamaEngine.stats()``."""

    slots: int = 0
    slots_busy: int = 0
    queued: int = 0
    generated_tokens: int = 0
    prompt_tokens_evaluated: int = 0
    prompt_tokens_cached: int = 0
    steps: int = 0
    finished: int = 0
    cancelled: int = 0


class Generation:
    """One submitted generation: ``cancel()`` it, or wait on ``dequeued`` until it holds a slot (or ended)."""

    def __init__(
        self, request: GenerationRequest, sink: Sink, is_cancelled: Callable[[], bool] | None, engine: LlamaEngine
    ) -> None:
        self.request = request
        self.sink = sink
        self.is_cancelled = is_cancelled
        self.submitted = time.perf_counter()
        self.dequeued = threading.Event()
        self._cancel = threading.Event()
        self._engine = engine

    def cancel(self) -> None:
        """Stop generating at the next step; the sink gets ``Finished`` with reason "cancelled"."""
        self._cancel.set()
        self._engine._wake()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()


class _TextAssembler:
    """Token bytes to text, holding back what could still become a stop string."""

    def __init__(self, stop: Sequence[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._longest_stop = max((len(s) for s in self._stop), default=0)
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def add(self, piece: bytes, final: bool = False) -> str:
        """Append ``piece``; return the text that can be sent on now."""
        self.text += self._decoder.decode(piece, final)
        if not self._stop:
            return self._release(len(self.text))
        # Held-back text is never sent, so a stop string can only start at or after ``emitted``.
        hits = [i for i in (self.text.find(s, self.emitted) for s in self._stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            return self._release(len(self.text))
        if final:
            return self._release(len(self.text))
        return self._release(len(self.text) - self._held_back())

    def _held_back(self) -> int:
        """Length of the longest tail of the text that starts some stop string."""
        for size in range(min(self._longest_stop - 1, len(self.text)), 0, -1):
            tail = self.text[-size:]
            if any(s.startswith(tail) for s in self._stop):
                return size
        return 0

    def _release(self, end: int) -> str:
        piece, self.emitted = self.text[self.emitted : end], max(self.emitted, end)
        return piece


class _Slot:
    """One KV-cache sequence and, while busy, the generation it decodes."""

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.cache: list[int] = []  # the tokens evaluated into this sequence, in order
        self.last_used = 0.0
        self.job: _Job | None = None


@dataclass
class _Job:
    generation: Generation
    slot: _Slot
    prompt: np.ndarray
    prompt_done: int  # prompt tokens in the cache so far
    cached: int
    assembler: _TextAssembler
    sampler: ctypes.c_void_p | None
    admitted_at: float
    next_token: int = -1  # sampled, not yet evaluated
    generated: int = 0
    first_token_at: float = 0.0
    output_row: int = -1  # this step's logits row, -1 when none
    next_cancel_poll: float = 0.0
    finish_reason: str = ""
    reading: int = 0  # prompt tokens in this step's batch

    @property
    def reading_prompt(self) -> bool:
        return self.prompt_done < len(self.prompt)


class _Batch:
    """A ``llama_batch`` over arrays this object owns, filled with NumPy slices."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq_id = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        int_p = ctypes.POINTER(ctypes.c_int32)
        base = self.seq_id.ctypes.data
        self._seq_pointers = (int_p * capacity)(*[ctypes.cast(base + 4 * i, int_p) for i in range(capacity)])
        self.size = 0

    def clear(self) -> None:
        self.size = 0

    def add(self, tokens: np.ndarray, first_pos: int, seq_id: int, logits_last: bool) -> int:
        """Append a run of one sequence's tokens; returns the index of the last one."""
        start, end = self.size, self.size + len(tokens)
        self.token[start:end] = tokens
        self.pos[start:end] = np.arange(first_pos, first_pos + len(tokens), dtype=np.int32)
        self.seq_id[start:end] = seq_id
        self.logits[start:end] = 0
        if logits_last:
            self.logits[end - 1] = 1
        self.size = end
        return end - 1

    def add_one(self, token: int, pos: int, seq_id: int) -> int:
        """One token that wants its logits (a generating sequence's next); returns its index."""
        i = self.size
        self.token[i], self.pos[i], self.seq_id[i], self.logits[i] = token, pos, seq_id, 1
        self.size = i + 1
        return i

    def struct(self) -> lc.llama_batch:
        return lc.llama_batch(
            n_tokens=self.size,
            token=self.token.ctypes.data_as(ctypes.POINTER(lc.llama_token)),
            embd=None,
            pos=self.pos.ctypes.data_as(ctypes.POINTER(lc.llama_pos)),
            n_seq_id=self.n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            seq_id=self._seq_pointers,
            logits=self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )


_backend_ready = threading.Lock()
_backend_initialised = False


def _init_backend() -> None:
    global _backend_initialised
    with _backend_ready:
        if not _backend_initialised:
            lc.llama_backend_init()
            _backend_initialised = True


class LlamaEngine:
    """A GGUF model served with continuous batching over ``slots`` sequences."""

    def __init__(
        self,
        model_path: str | Path,
        slots: int = 4,
        slot_context: int = 4096,
        batch_tokens: int = 512,
        max_queued: int = 256,
        n_gpu_layers: int = 0,
        main_gpu: int = 0,
        n_threads: int | None = None,
        observer: EngineObserver | None = None,
        step_prompt_tokens: int | None = None,
    ) -> None:
        if slots < 1 or slot_context < 16 or batch_tokens < slots:
            raise ValueError("need slots >= 1, slot_context >= 16 and batch_tokens >= slots")
        if step_prompt_tokens is not None and step_prompt_tokens < 1:
            raise ValueError("step_prompt_tokens must be >= 1 (or None: up to batch_tokens)")
        _init_backend()
        model_params = lc.llama_model_default_params()
        model_params.n_gpu_layers = n_gpu_layers
        model_params.main_gpu = main_gpu
        self._model = lc.llama_model_load_from_file(str(model_path).encode(), model_params)
        if not self._model:
            missing = "" if Path(model_path).is_file() else " (no such file)"
            raise ValueError(f"llama.cpp could not load {model_path}{missing}")
        threads = n_threads or max(1, os.cpu_count() or 1)
        params = lc.llama_context_default_params()
        params.n_ctx = slots * slot_context
        params.n_seq_max = slots
        params.n_batch = batch_tokens
        params.n_ubatch = min(batch_tokens, 512)
        params.n_threads = threads
        params.n_threads_batch = threads
        params.kv_unified = False
        params.no_perf = os.environ.get("MILO_LLAMA_PERF") is None
        self._ctx = lc.llama_init_from_model(self._model, params)
        if not self._ctx:
            lc.llama_model_free(self._model)
            raise ValueError(f"llama.cpp could not create a context of {slots} x {slot_context} tokens")
        self._memory = lc.llama_get_memory(self._ctx)
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        self.slot_context = int(lc.llama_n_ctx_seq(self._ctx))
        self.batch_tokens = batch_tokens
        self.step_prompt_tokens = step_prompt_tokens or batch_tokens
        self.max_queued = max_queued
        self.observer = observer or EngineObserver()
        self.observer.capacity(slots)
        self._pieces = [self._piece(t) for t in range(self.n_vocab)]
        self._is_eog = np.array([lc.llama_vocab_is_eog(self._vocab, t) for t in range(self.n_vocab)], dtype=bool)
        self._eog_ids = np.flatnonzero(self._is_eog)
        self._slots = [_Slot(i) for i in range(slots)]
        self._batch = _Batch(batch_tokens)
        self._queue: deque[Generation] = deque()
        self._jobs: list[_Job] = []
        self._stats = EngineStats(slots=slots)
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="llama-engine", daemon=True)
        self._thread.start()

    # -- vocabulary ----------------------------------------------------------------

    def _piece(self, token: int) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        size = lc.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        if size < 0:
            buffer = ctypes.create_string_buffer(-size)
            size = lc.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        return buffer.raw[:size]

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Tokens of ``text`` (a rendered prompt: its special tokens are parsed, no BOS added)."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        tokens = (lc.llama_token * capacity)()
        count = lc.llama_tokenize(self._vocab, data, len(data), tokens, capacity, False, special)
        if count < 0:
            tokens = (lc.llama_token * -count)()
            count = lc.llama_tokenize(self._vocab, data, len(data), tokens, -count, False, special)
        return list(tokens[:count])

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self._pieces[t] for t in tokens).decode("utf-8", errors="replace")

    def metadata(self, key: str) -> str | None:
        """A string value of the GGUF's metadata (``tokenizer.chat_template``), or None."""
        size = 1 << 16
        while True:
            buffer = ctypes.create_string_buffer(size)
            length = lc.llama_model_meta_val_str(self._model, key.encode(), buffer, size)
            if length < 0:
                return None
            if length < size:
                return buffer.value.decode("utf-8")
            size = length + 1

    def token_text(self, token: int) -> str:
        """A token's text as the vocabulary writes it (special tokens included), "" for none."""
        return "" if token < 0 else lc.llama_vocab_get_text(self._vocab, token).decode("utf-8")

    @property
    def bos_token(self) -> int:
        return lc.llama_vocab_bos(self._vocab)

    @property
    def eos_token(self) -> int:
        return lc.llama_vocab_eos(self._vocab)

    @property
    def slots(self) -> int:
        return len(self._slots)

    # -- public API ------------------------------------------------------------------

    def warm_prefix(self, tokens: Sequence[int]) -> None:
        """Evaluate ``tokens`` once and give every slot a copy: the system prompt all prompts start with."""
        prefix = np.asarray(tokens, dtype=np.int32)
        if not 0 < len(prefix) < self.slot_context:
            raise ValueError("the shared prefix must be shorter than a slot")
        with self._lock:
            if self._jobs or self._queue:
                raise RuntimeError("warm_prefix runs before the first generation")
            first = self._slots[0]
            lc.llama_memory_seq_rm(self._memory, first.seq_id, -1, -1)
            for start in range(0, len(prefix), self.batch_tokens):
                self._batch.clear()
                chunk = prefix[start : start + self.batch_tokens]
                self._batch.add(chunk, start, first.seq_id, logits_last=False)
                self._decode()
            first.cache = prefix.tolist()
            for slot in self._slots[1:]:
                # Each sequence has its own stream: the copy duplicates the stream's buffers.
                lc.llama_memory_seq_cp(self._memory, first.seq_id, slot.seq_id, -1, -1)
                slot.cache = prefix.tolist()
            self._stats.prompt_tokens_evaluated += len(prefix)

    def submit(
        self, request: GenerationRequest, sink: Sink, is_cancelled: Callable[[], bool] | None = None
    ) -> Generation:
        """Queue a generation. Raises ``EngineBusyError`` when the queue is full."""
        if not request.prompt:
            raise ValueError("the prompt is empty")
        if len(request.prompt) >= self.slot_context:
            raise ValueError(f"the prompt has {len(request.prompt)} tokens; a slot holds {self.slot_context}")
        if request.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        generation = Generation(request, sink, is_cancelled, self)
        with self._work:
            if self._closed:
                raise EngineStoppedError("the chat engine is closed")
            if len(self._queue) >= self.max_queued:
                raise EngineBusyError(f"Exceeds maximum queue size of the chat engine ({self.max_queued})")
            self._queue.append(generation)
            self._stats.queued = len(self._queue)
            self._work.notify()
        return generation

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(**vars(self._stats))

    def close(self) -> None:
        """Stop the scheduler; queued and running generations fail with ``EngineStoppedError``."""
        with self._work:
            if self._closed:
                return
            self._closed = True
            self._work.notify()
        self._thread.join()
        self.observer.capacity(-self.slots)
        for job in self._jobs:
            self._free_sampler(job)
        lc.llama_free(self._ctx)
        lc.llama_model_free(self._model)

    def _wake(self) -> None:
        with self._work:
            self._work.notify()

    # -- scheduler ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._work:
                while not self._closed and not self._queue and not self._jobs:
                    self._work.wait()
                if self._closed:
                    break
            try:
                self._step()
            except Exception as exc:  # the engine lives on: fail what was in flight, not the host
                log.exception("chat engine step failed")
                for job in list(self._jobs):
                    self._fail(job, exc)
        stopped = EngineStoppedError("the chat engine was closed")
        with self._lock:
            queued, self._queue = list(self._queue), deque()
        for generation in queued:
            generation.dequeued.set()
            generation.sink(Failed(stopped))
        for job in list(self._jobs):
            self._fail(job, stopped)

    def _step(self) -> None:
        now = time.perf_counter()
        for job in list(self._jobs):
            if self._cancel_requested(job, now):
                job.finish_reason = "cancelled"
                self._finish(job)
        self._admit(now)
        if not self._jobs:
            return
        self._fill_batch()
        self._decode()
        self._sample()

    def _cancel_requested(self, job: _Job, now: float) -> bool:
        generation = job.generation
        if generation.cancel_requested:
            return True
        if generation.is_cancelled is not None and now >= job.next_cancel_poll:
            job.next_cancel_poll = now + CANCEL_POLL_S
            try:
                return bool(generation.is_cancelled())
            except Exception:  # a request whose state cannot be read is gone
                return True
        return False

    def _admit(self, now: float) -> None:
        while True:
            with self._lock:
                free = [s for s in self._slots if s.job is None]
                if not free or not self._queue:
                    self._stats.queued = len(self._queue)
                    return
                generation = self._queue.popleft()
                self._stats.queued = len(self._queue)
            if generation.cancel_requested:
                generation.dequeued.set()
                generation.sink(Finished(self._result_of_unstarted(generation, now)))
                continue
            prompt = np.asarray(generation.request.prompt, dtype=np.int32)
            slot, shared = self._best_slot(free, prompt)
            # At least the prompt's last token is evaluated: its logits give the first reply token.
            keep = min(shared, len(prompt) - 1)
            if not lc.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1):
                lc.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
                keep = 0
            slot.cache = slot.cache[:keep]
            job = _Job(
                generation=generation,
                slot=slot,
                prompt=prompt,
                prompt_done=keep,
                cached=keep,
                assembler=_TextAssembler(generation.request.stop),
                sampler=self._sampler(generation.request.sampling),
                admitted_at=now,
            )
            slot.job = job
            self._jobs.append(job)
            with self._lock:
                self._stats.slots_busy = len(self._jobs)
                self._stats.prompt_tokens_cached += keep
            self.observer.slots_busy(+1)
            self.observer.admitted(now - generation.submitted)
            generation.dequeued.set()

    def _best_slot(self, free: list[_Slot], prompt: np.ndarray) -> tuple[_Slot, int]:
        """The free slot sharing the longest prefix with ``prompt``; the least recently used on a tie."""
        best, best_shared = free[0], -1
        for slot in sorted(free, key=lambda s: s.last_used):
            size = min(len(slot.cache), len(prompt))
            differ = np.flatnonzero(np.asarray(slot.cache[:size], dtype=np.int32) != prompt[:size])
            shared = int(differ[0]) if len(differ) else size
            if shared > best_shared:
                best, best_shared = slot, shared
        return best, best_shared

    def _sampler(self, sampling: Sampling) -> ctypes.c_void_p | None:
        """A llama.cpp sampler chain, or None for greedy decoding (done for all rows at once)."""
        if sampling.temperature <= 0:
            return None
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if sampling.ignore_eos and len(self._eog_ids):
            bias = (lc.llama_logit_bias * len(self._eog_ids))(
                *[lc.llama_logit_bias(int(t), float("-inf")) for t in self._eog_ids]
            )
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_logit_bias(self.n_vocab, len(self._eog_ids), bias))
        if sampling.top_k > 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(sampling.top_k))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(sampling.top_p, 1))
        if sampling.min_p > 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(sampling.min_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(sampling.temperature))
        seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(4), "little")
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _fill_batch(self) -> None:
        batch = self._batch
        batch.clear()
        # Generating sequences first, one token each, always in slot order: a step laid out as the
        # one before lets llama.cpp reuse its compute graph (and on a GPU its CUDA graph); in
        # arrival order, every new request reshuffled the batch and the graph was rebuilt each step.
        for job in sorted(self._jobs, key=lambda j: j.slot.seq_id):
            job.output_row = -1
            if not job.reading_prompt:
                job.output_row = batch.add_one(job.next_token, len(job.slot.cache), job.slot.seq_id)
        # Then prompts, in arrival order, in chunks that fill what is left of the step (of the
        # prompts' share of it while others are generating).
        generating = batch.size
        limit = batch.capacity if generating == 0 else min(batch.capacity, generating + self.step_prompt_tokens)
        for job in self._jobs:
            room = limit - batch.size
            if room <= 0:
                break
            if job.reading_prompt:
                chunk = job.prompt[job.prompt_done : job.prompt_done + room]
                last = job.prompt_done + len(chunk) == len(job.prompt)
                row = batch.add(chunk, job.prompt_done, job.slot.seq_id, logits_last=last)
                job.output_row = row if last else -1
                job.reading = len(chunk)

    def _decode(self) -> None:
        status = lc.llama_decode(self._ctx, self._batch.struct())
        if status != 0:
            raise DecodeError(f"llama_decode returned {status} for a batch of {self._batch.size} tokens")

    def _sample(self) -> None:
        now = time.perf_counter()
        rows = [job for job in self._jobs if job.output_row >= 0]
        logits_rows = [job.output_row for job in rows]
        # Batch order of the rows that asked for logits equals llama_get_logits' row order.
        output_index = {row: i for i, row in enumerate(sorted(logits_rows))}
        greedy = [job for job in rows if job.sampler is None]
        chosen: dict[int, int] = {}
        if greedy:
            table = np.ctypeslib.as_array(lc.llama_get_logits(self._ctx), shape=(len(logits_rows), self.n_vocab))
            picked = table[[output_index[job.output_row] for job in greedy]]
            ignoring = [i for i, job in enumerate(greedy) if job.generation.request.sampling.ignore_eos]
            if ignoring and len(self._eog_ids):
                picked = picked.copy()
                picked[np.ix_(ignoring, self._eog_ids)] = -np.inf
            for job, token in zip(greedy, np.argmax(picked, axis=1).tolist(), strict=True):
                chosen[id(job)] = token
        for job in rows:
            if job.sampler is not None:
                chosen[id(job)] = lc.llama_sampler_sample(job.sampler, self._ctx, job.output_row)
        evaluated_prompt = 0
        for job in list(self._jobs):
            if job.reading:
                read = job.prompt[job.prompt_done : job.prompt_done + job.reading]
                job.slot.cache.extend(read.tolist())
                job.prompt_done += job.reading
                evaluated_prompt += job.reading
                job.reading = 0
            elif job.next_token >= 0 and job.output_row >= 0:  # the fed-back reply token is now in the cache
                job.slot.cache.append(job.next_token)
            if id(job) in chosen:
                self._take(job, chosen[id(job)], now)
        generated = len(chosen)
        with self._lock:
            self._stats.steps += 1
            self._stats.generated_tokens += generated
            self._stats.prompt_tokens_evaluated += evaluated_prompt
        if generated:
            self.observer.tokens(generated)

    def _take(self, job: _Job, token: int, now: float) -> None:
        """One sampled token: end the generation, or pass its text on and feed it back next step."""
        if job.generated == 0:
            job.first_token_at = now
            self.observer.first_token(now - job.generation.submitted)
        if self._is_eog[token] and not job.generation.request.sampling.ignore_eos:
            job.finish_reason = "stop"
        else:
            job.generated += 1
            text = job.assembler.add(self._pieces[token])
            if text and job.generation.request.pieces:
                job.generation.sink(TextPiece(text))
            if job.assembler.stopped:
                job.finish_reason = "stop"
            elif job.generated >= job.generation.request.max_tokens or len(job.slot.cache) >= self.slot_context:
                job.finish_reason = "length"
            else:
                job.next_token = token
                return
        self._finish(job)

    def _finish(self, job: _Job) -> None:
        tail = job.assembler.add(b"", final=True)
        if tail and job.generation.request.pieces:
            job.generation.sink(TextPiece(tail))
        generation = job.generation
        result = GenerationResult(
            text=job.assembler.text,
            finish_reason=job.finish_reason,
            completion_tokens=job.generated,
            prompt_tokens=len(job.prompt),
            cached_tokens=job.cached,
            queue_seconds=job.admitted_at - generation.submitted,
            first_token_seconds=(job.first_token_at - generation.submitted) if job.first_token_at else 0.0,
        )
        self._release(job)
        with self._lock:
            self._stats.finished += 1
            self._stats.cancelled += job.finish_reason == "cancelled"
        generation.sink(Finished(result))

    def _fail(self, job: _Job, error: Exception) -> None:
        # What the failed step left in the sequence is unknown: the slot starts empty.
        lc.llama_memory_seq_rm(self._memory, job.slot.seq_id, -1, -1)
        job.slot.cache = []
        self._release(job)
        job.generation.sink(Failed(error))

    def _release(self, job: _Job) -> None:
        self._free_sampler(job)
        job.slot.job = None
        job.slot.last_used = time.perf_counter()
        self._jobs.remove(job)
        with self._lock:
            self._stats.slots_busy = len(self._jobs)
        self.observer.slots_busy(-1)

    def _free_sampler(self, job: _Job) -> None:
        if job.sampler is not None:
            lc.llama_sampler_free(job.sampler)
            job.sampler = None

    def _result_of_unstarted(self, generation: Generation, now: float) -> GenerationResult:
        with self._lock:
            self._stats.finished += 1
            self._stats.cancelled += 1
        return GenerationResult(
            text="",
            finish_reason="cancelled",
            completion_tokens=0,
            prompt_tokens=len(generation.request.prompt),
            cached_tokens=0,
            queue_seconds=now - generation.submitted,
            first_token_seconds=0.0,
        )
