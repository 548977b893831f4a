"""Beam search over ``NllbModel``'s steps, deciding what CTranslate2's ``BeamSearch`` decides.

The rules of src/decoding.cc (``BeamSearch::search``, ``update_sample_with_prefix``,
``finalize_hypothesis_score``), as ``Translator.translate_batch`` runs them with a target prefix:

- every sentence starts with ``beam_size`` copies of the decoder's start token, only the first
  with score 0 (the others at the lowest float, so the first step expands one beam);
- a step takes the ``2 x beam_size`` best candidates over all beams (cumulative log-probability);
- while a sentence's forced prefix lasts, every candidate is replaced by the prefix token, the
  first with score 0 and the others at -1e10; on the first free step, end tokens among the
  secondary candidates are replaced by token 0 at -1e10;
- a candidate among the first ``beam_size`` that ends (the end token, or the last step) is a
  finished hypothesis (prefix and end token included); the next candidate that does not end
  takes its place among the beams;
- a sentence is done with ``beam_size`` finished hypotheses (no early exit under a length
  penalty), or at the last step; each score is divided by its length to the power
  ``length_penalty``, and the best one is kept;
- the end token is forbidden while the hypothesis is shorter than ``min_length`` (prefix included).

Tests hold this to CTranslate2 on the CPU in float32: same tokens, same scores.

``BeamSearch`` searches sentences together step by step, each at its own step: a sentence added
while others search joins them at the next step, and one that is done leaves at once, freeing its
rows for the next (step-level batching: a server's GPU stays busy without waiting for a whole batch
to end before the next begins). ``beam_search`` is a batch searched to its end.

A step may be launched before the one ahead of it is collected (``STEPS_IN_FLIGHT``): the device
goes from one step to the next while the host reads the first one's results, so the host's work
between two steps (answers, new requests, a server's other threads) never leaves it idle. A
sentence a step finishes is inert from then on, in the device's state: the step queued behind
decodes nothing for it, and its results are copied to the host as the step ends.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import deque
from dataclasses import dataclass

import torch

from milo_voice.roles.cuda_graphs import capture
from milo_voice.roles.host_to_device import queued_copy
from milo_voice.roles.nllb.kernels import TOPS
from milo_voice.roles.nllb.model import WARM_SOURCE_LENGTHS, NllbModel, power_of_two

PREFIX_PENALTY = -1e10  # CTranslate2's score for the candidates a forced prefix replaces
# ``row_top``'s chunk: the best of each chunk of this many columns of the vocabulary, then the best of
# those. torch's selection over a whole row of a large vocabulary runs a multi-block radix select
# of several kernels; over chunks, one block a chunk.
TOP_CHUNK = 1024
# Steps queued on the device at most: the one decoding and the next, launched before the first
# is collected (its admissions wait for the host to learn which rows the first freed).
STEPS_IN_FLIGHT = 2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # the prefix, the decoded tokens and, where it ended, the end token
    score: float  # the cumulative log-probability over length ** length_penalty


@dataclass(frozen=True)
class SearchOptions:
    start_id: int
    end_id: int
    beam_size: int = 2
    max_length: int = 256  # tokens of a hypothesis, prefix included
    min_length: int = 0
    length_penalty: float = 1.0


@dataclass
class _Sentence:
    ticket: int
    source: list[int]
    prefix: list[int]
    slot: int = -1  # its beams are rows slot x beam_size, and the next beam_size - 1
    started: int = 0  # the search's step count when it joined: its own step is the difference


@dataclass
class _Launched:
    """A step queued on the device, and what ``collect`` reads of it: copied to the host behind it."""

    sentences: dict[int, _Sentence]  # by slot: those searching on the host when it was launched
    summary: torch.Tensor  # each slot: searching, done, ended count, ended lengths and scores
    tokens: torch.Tensor  # each slot's ended hypotheses, to the positions the step had written
    ended: torch.cuda.Event | None  # recorded behind the copies; None where they are done (a CPU)


class BeamSearch:
    """Sentences searched together over ``model``, a step at a time.

    ``capacity``: the most sentences searching at once (their rows are the decoder's batch); those
    added beyond it wait, in the order they came, for a sentence to end. Not thread-safe: one
    caller adds, steps (or launches and collects, up to ``STEPS_IN_FLIGHT`` launched) and cancels.

    The search's state lives on the model's device, one tensor for every sentence: a step's rules
    run as a few tensor operations whatever the sentences, and the host waits for the device once,
    to learn which sentences are done (their hypotheses then come back).

    ``graphs``: a whole step (the decoder's, the choice of candidates, the beams' bookkeeping) is
    recorded once per shape as a CUDA graph by ``warm_up`` and replayed. Launched op by op, the
    rules' hundred small operations take the host about as long as the decoder's step takes the
    GPU, and the host launches them while holding the interpreter's lock that a server's other
    threads wait on. A step then covers a power of two of sentence slots (those past the last
    sentence search nothing), and attends over the rounded-up positions the model's graphs read.
    ``pad_groups`` alone does the same op by op (the tests' way to run on a CPU what a graph records).
    """

    def __init__(
        self,
        model: NllbModel,
        options: SearchOptions,
        capacity: int,
        graphs: bool = False,
        pad_groups: bool = False,
        top_passes: int = 1,
    ) -> None:
        if options.beam_size < 2:
            raise ValueError("beam search needs beam_size >= 2 (CTranslate2 decodes beam 1 greedily)")
        if graphs and not model.cuda_graphs:
            raise ValueError("a search recorded as CUDA graphs needs a model that runs them")
        self.model, self.options, self.capacity = model, options, capacity
        self.graphs, self.pad_groups = graphs, graphs or pad_groups
        if top_passes not in TOPS.values():
            raise ValueError("each row's best logits are taken in 1 pass over the vocabulary or 2")
        self.top_passes = top_passes  # ``top_of_rows``
        # Slots a step may cover: padded to a power of two, the state holds that many.
        self._slot_count = power_of_two(capacity) if self.pad_groups else capacity
        if self.pad_groups:
            model.reserve(self._slot_count * options.beam_size)
        # Steps recorded by shape (slots, source bucket, span bucket): the graph and the summary it writes.
        self._recorded: dict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._recorded_on = -1  # the model's buffers generation they read
        self.max_length = min(options.max_length, model.max_length)
        self._tickets = itertools.count()
        self._waiting: deque[_Sentence] = deque()
        self._searching: dict[int, _Sentence] = {}  # by slot
        self._free: list[int] = list(range(capacity))  # a heap: the lowest slot first keeps the rows few
        self._clock = 0  # steps taken
        self.last_step_sentences = 0  # the sentences the last step collected decoded
        self._lowest = torch.finfo(torch.float32).min
        beam, length, device = options.beam_size, self.max_length, model.device
        capacity = self._slot_count
        rows, kept = capacity * beam, 2 * beam  # at most 2 x beam - 1 hypotheses end before a sentence is done

        def longs(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.long, device=device)

        # Each row (a beam): its last token, cumulative score and tokens so far.
        self._tokens, self._history = longs(rows), longs(rows, length)
        self._scores = torch.full((rows,), self._lowest, device=device)
        # Each slot (a sentence): its step, forced prefix, and the hypotheses that ended.
        self._steps, self._prefix_lengths = longs(capacity), longs(capacity)
        self._prefixes = longs(capacity, 1)
        self._ended_tokens, self._ended_lengths = longs(capacity, kept, length), longs(capacity, kept)
        self._ended_count = longs(capacity)
        self._ended_scores = torch.zeros(capacity, kept, device=device)
        self._searching_mask = torch.zeros(capacity, dtype=torch.bool, device=device)
        self._in_flight: deque[_Launched] = deque()  # steps launched, oldest first, until collected

    @property
    def busy(self) -> bool:
        return bool(self._searching or self._waiting or self._in_flight)

    @property
    def in_flight(self) -> int:
        """Steps launched and not collected."""
        return len(self._in_flight)

    max_in_flight = STEPS_IN_FLIGHT  # steps that may be launched before the oldest is collected

    def waiting(self) -> set[int]:
        """The tickets of the sentences that wait for rows: those the next step will not admit, the
        rows free then being taken by the sentences added before them."""
        return {sentence.ticket for sentence in itertools.islice(self._waiting, len(self._free), None)}

    def add(self, source: list[int], prefix: list[int]) -> int:
        """Queue ``source``, decoded after its forced ``prefix``; its ticket names its result."""
        sentence = _Sentence(next(self._tickets), source, prefix)
        self._waiting.append(sentence)
        return sentence.ticket

    def cancel(self, tickets: set[int]) -> None:
        """Drop these sentences, waiting or searching (their client has gone)."""
        self._waiting = deque(s for s in self._waiting if s.ticket not in tickets)
        leaving = [slot for slot, sentence in self._searching.items() if sentence.ticket in tickets]
        if leaving:
            self._leave(leaving)

    def step(self) -> dict[int, Hypothesis]:
        """Admit the waiting sentences that find rows, decode one token of every searching one, and
        return the best hypothesis of each that is done, by ticket."""
        self.launch()
        return self.collect()

    @torch.inference_mode()
    def launch(self) -> None:
        """Admit the waiting sentences that find rows, and queue a step of every searching one on the
        model's device without waiting for it: the caller's host work runs while the device decodes,
        until ``collect``. Between the two, sentences may be added (they join at the next launch, or
        at ``admit``) and cancelled. With a step launched and not collected, the next is queued
        behind it; the rows that step frees are known, and taken again, once it is collected."""
        if len(self._in_flight) >= self.max_in_flight:
            raise RuntimeError(f"{self.max_in_flight} steps launched are not collected")
        stale = self._recorded_on != self.model.graphs_generation
        if self.graphs and stale and not self._searching and not self._in_flight:
            self.warm_up()  # never recorded, or on buffers since replaced (a longer source): record them now
        self.admit()
        if not self._searching:
            return
        groups = max(self._searching) + 1
        source_length = max(len(s.source) for s in self._searching.values())
        # The positions the oldest sentence has written, and the one it writes now.
        span = min(self._clock - min(s.started for s in self._searching.values()) + 1, self.max_length)
        if self.pad_groups:
            model = self.model
            groups = power_of_two(groups)  # at most the slots: groups <= capacity
            source_length, span = model.source_bucket(source_length), model.span_bucket(span)
        recorded = self._recorded.get((groups, source_length, span))
        if recorded is not None and self._recorded_on == self.model.graphs_generation:
            recorded[0].replay()
            summary = recorded[1]
        else:
            summary = self._decode_step(groups, source_length, span)
        # Every hypothesis that has ended is at most as long as the positions the oldest sentence wrote.
        self._in_flight.append(self._read_back(summary, self._ended_tokens[:groups, :, :span]))
        self._clock += 1

    def _read_back(self, summary: torch.Tensor, tokens: torch.Tensor) -> _Launched:
        """The step's summary and ended hypotheses, copied to the host behind it (page-locked memory,
        so that the copy is queued and the host does not wait for it), and an event to wait on."""
        on_gpu = self.model.device.type == "cuda"
        copies = [
            torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=on_gpu).copy_(tensor, non_blocking=on_gpu)
            for tensor in (summary, tokens)
        ]
        ended = None
        if on_gpu:
            ended = torch.cuda.Event()
            ended.record()
        return _Launched(dict(self._searching), copies[0], copies[1], ended)

    def warm_up(self) -> None:
        """Record a step of every shape a search of ``capacity`` sentences takes as a CUDA graph (a
        few seconds on a GPU), while no sentence searches: recording runs a step twice for real, which
        changes nothing of slots that hold no sentence. Without ``graphs``, nothing to do."""
        if not self.graphs or self._searching:
            return
        model = self.model
        lengths = (*WARM_SOURCE_LENGTHS, model.source_capacity)  # and the longest the buffers hold now
        # The buffers for them, before recording: the model's own graphs are not this search's
        # (they were captured at load; its admissions are captured as they come).
        model.reserve(self._slot_count * self.options.beam_size, max(lengths))
        buckets = sorted({model.source_bucket(n) for n in lengths})
        spans = sorted({model.span_bucket(n) for n in range(1, self.max_length + 1)})
        slots = sorted({power_of_two(n) for n in range(1, self._slot_count + 1)})
        self._recorded.clear()
        try:
            for shape in itertools.product(slots, buckets, spans):
                run = lambda s=shape: self._decode_step(*s, True)  # noqa: E731
                self._recorded[shape] = capture(model.device, run, model.graph_pool)
        except RuntimeError:  # a step that cannot be recorded still searches, op by op
            log.exception("a search step could not be recorded as a CUDA graph: the search runs op by op")
            self._recorded.clear()
            self.graphs = False
        self._recorded_on = model.graphs_generation
        self._steps.zero_()  # the recording's runs counted steps of the empty slots
        log.info("recorded %d search steps as CUDA graphs", len(self._recorded))

    @torch.inference_mode()
    def _decode_step(self, groups: int, source_length: int, span: int, within_graph: bool = False) -> torch.Tensor:
        """A step of the sentences in the first ``groups`` slots, their sources of at most
        ``source_length`` tokens and ``span`` positions written: a new token of each beam, the
        hypotheses that end kept, the beams' state and cache moved to the candidates chosen. Reads
        and writes only the search's and the model's tensors, whose addresses do not change, so
        that a CUDA graph can record it. Returns what ``collect`` reads, queued on the device."""
        options, model = self.options, self.model
        beam, end, candidates = options.beam_size, options.end_id, 2 * options.beam_size
        rows = groups * beam
        steps = self._steps[:groups]
        positions = steps.clamp(max=self.max_length - 1).repeat_interleave(beam)
        logits = model.step(self._tokens[:rows], positions, source_length, span, within_graph)
        if options.min_length:
            forbidden = torch.finfo(logits.dtype).min
            logits[:, end] = torch.where(positions < options.min_length, forbidden, logits[:, end])
        words, scores, origins = self._candidates(logits, groups, candidates)
        words, scores, origins = self._force_prefix(steps, words, scores, origins)
        searching = self._searching_mask[:groups]
        ends = (words == end) & (steps >= self._prefix_lengths[:groups])[:, None]
        last_step = steps + 1 == self.max_length
        first_rows = torch.arange(groups, device=model.device) * beam
        # A candidate among the first beam_size that ends is a finished hypothesis; the next
        # candidate that does not end takes its place among the beams.
        chosen = torch.arange(beam, device=model.device).repeat(groups, 1)
        secondary = torch.full((groups,), beam, dtype=torch.long, device=model.device)
        after = torch.arange(candidates, device=model.device)[None, :]
        for k in range(beam):
            ending = (ends[:, k] | last_step) & searching
            self._record_ended(groups, ending, first_rows + origins[:, k], words[:, k], scores[:, k], steps)
            replacement = (after >= secondary[:, None]) & (words != end)
            replaced = ending & replacement.any(dim=1)
            j = replacement.to(torch.int8).argmax(dim=1)  # the first that does not end
            chosen[:, k] = torch.where(replaced, j, chosen[:, k])
            secondary = torch.where(replaced, j + 1, secondary)
        done = searching & (last_step | (self._ended_count[:groups] >= beam))
        going_on = (searching & ~done).repeat_interleave(beam)
        was_searching = searching.clone()
        searching.logical_and_(~done)  # inert from now on: a step launched before this is collected skips it
        continued_from = (first_rows[:, None] + origins.gather(1, chosen)).view(-1)
        row_origins = torch.where(going_on, continued_from, torch.arange(rows, device=model.device))
        self._tokens[:rows] = torch.where(going_on, words.gather(1, chosen).view(-1), 0)
        self._scores[:rows] = torch.where(going_on, scores.gather(1, chosen).view(-1), self._lowest)
        history = self._history[:rows].index_select(0, row_origins)
        history.scatter_(1, positions[:, None], self._tokens[:rows, None])
        self._history[:rows] = history
        model.reorder(row_origins, span)
        self._steps[:groups] += 1
        ended = [self._ended_count[:groups, None], self._ended_lengths[:groups], self._ended_scores[:groups]]
        # What the host reads of the step (small counts are exact in float).
        return torch.cat([was_searching[:, None], done[:, None], *ended], dim=1).float()

    def _candidates(
        self, logits: torch.Tensor, groups: int, count: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each sentence's ``count`` best continuations over its beams, by cumulative log-probability:
        their words, scores and beams (``[groups, count]``).

        Log-softmax is monotonic within a row, and a beam's score is one number for its row: the
        best over a sentence's beams are among each row's ``count`` best logits. So each row's best
        are taken from its logits as they are, and only they are normalised, by the row's
        log-sum-exp, summed in float32: the vocabulary-wide log-probabilities are never written.
        """
        best, words = top_of_rows(logits, count, self.top_passes)  # [rows, count]
        peak = best[:, :1]  # highest first: each row's largest logit, without another pass over the vocabulary
        normaliser = peak.float() + (logits - peak).exp_().sum(dim=-1, keepdim=True, dtype=torch.float32).log()
        log_probs = best.float() - normaliser + self._scores[: len(logits), None]
        scores, flat = log_probs.view(groups, -1).topk(count, dim=-1)
        return words.view(groups, -1).gather(1, flat), scores, flat // count

    def _force_prefix(
        self, steps: torch.Tensor, words: torch.Tensor, scores: torch.Tensor, origins: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """While a sentence's prefix lasts, every candidate is its next token from beam 0, the first
        at score 0 and the others at ``PREFIX_PENALTY``; on its first free step, the secondary
        candidates that end are token 0 at ``PREFIX_PENALTY``."""
        groups, candidates = words.shape
        lengths = self._prefix_lengths[:groups]
        forced = (steps < lengths)[:, None]
        forced_words = self._prefixes[:groups].gather(1, steps.clamp(max=self._prefixes.shape[1] - 1)[:, None])
        secondary = torch.arange(candidates, device=words.device)[None, :] > 0
        freed = (steps == lengths)[:, None] & secondary & (words == self.options.end_id)
        penalty = torch.where(secondary, PREFIX_PENALTY, 0.0)
        words = torch.where(forced, forced_words, torch.where(freed, 0, words))
        scores = torch.where(forced, penalty, torch.where(freed, PREFIX_PENALTY, scores))
        origins = torch.where(forced | freed, 0, origins)
        return words, scores, origins

    def _record_ended(
        self,
        groups: int,
        ending: torch.Tensor,
        rows: torch.Tensor,
        words: torch.Tensor,
        scores: torch.Tensor,
        steps: torch.Tensor,
    ) -> None:
        """Keep, for each sentence where ``ending``, the hypothesis of beam row ``rows`` continued by
        ``words`` at ``scores`` (written in every sentence's next place, kept where it ends)."""
        group = torch.arange(groups, device=ending.device)
        place = self._ended_count[:groups].clamp(max=self._ended_scores.shape[1] - 1)
        tokens = self._history.index_select(0, rows)
        tokens.scatter_(1, steps.clamp(max=self.max_length - 1)[:, None], words[:, None])
        kept = ending[:, None]
        self._ended_tokens[group, place] = torch.where(kept, tokens, self._ended_tokens[group, place])
        self._ended_scores[group, place] = torch.where(ending, scores, self._ended_scores[group, place])
        self._ended_lengths[group, place] = torch.where(ending, steps + 1, self._ended_lengths[group, place])
        self._ended_count[:groups] += ending

    @torch.inference_mode()
    def collect(self) -> dict[int, Hypothesis]:
        """Wait for the oldest step launched; the best hypothesis of each sentence it finished, by
        ticket (those cancelled since the launch left already). Each leaves the search."""
        if not self._in_flight:
            self.last_step_sentences = 0
            return {}
        launched = self._in_flight.popleft()
        if launched.ended is not None:
            launched.ended.synchronize()  # the step's one wait for the device: not for those behind it
        kept = self._ended_scores.shape[1]
        summary = launched.summary.tolist()
        self.last_step_sentences = sum(int(row[0]) for row in summary)
        best: dict[int, tuple[int, float, int]] = {}  # by slot: which hypothesis, its score and length
        for slot, (_searching, is_done, count, *ended_values) in enumerate(summary):
            sentence = launched.sentences.get(slot)
            # A slot left since the launch (cancelled) may hold another sentence by now.
            if not is_done or sentence is None or self._searching.get(slot) is not sentence:
                continue
            lengths, scores = [int(n) for n in ended_values[:kept]], ended_values[kept:]
            # CTranslate2's rule, on the host in double precision: the first of the highest scores.
            normalised = [scores[i] / lengths[i] ** self.options.length_penalty for i in range(int(count))]
            index = max(range(int(count)), key=normalised.__getitem__)
            best[slot] = (index, normalised[index], lengths[index])
        if not best:
            return {}
        results = {}
        for slot, (index, score, length) in best.items():
            results[self._searching[slot].ticket] = Hypothesis(launched.tokens[slot, index, :length].tolist(), score)
        self._leave(list(best))
        return results

    @torch.inference_mode()
    def admit(self) -> None:
        """Admit the waiting sentences that find rows now, their encoder pass queued behind the steps
        launched: they join the next step launched. ``launch`` admits too; admitting while a step
        decodes takes the host's part of it off the time between two steps."""
        admitted = []
        while self._waiting and self._free:
            sentence = self._waiting.popleft()
            sentence.slot, sentence.started = heapq.heappop(self._free), self._clock
            admitted.append(sentence)
        if not admitted:
            return
        beam, device = self.options.beam_size, self.model.device
        self.model.admit([s.source for s in admitted], [s.slot * beam for s in admitted], beam)
        longest = max(len(s.prefix) for s in admitted)
        if longest > self._prefixes.shape[1]:
            grown = torch.zeros(self._slot_count, longest, dtype=torch.long, device=device)
            grown[:, : self._prefixes.shape[1]] = self._prefixes
            self._prefixes = grown
            self._recorded_on = -1  # the steps recorded read the old prefixes: recorded again once idle
        width = self._prefixes.shape[1]
        # Each sentence's slot, prefix length and prefix, in one copy queued behind the device's work.
        packed = [[s.slot, len(s.prefix), *s.prefix, *[0] * (width - len(s.prefix))] for s in admitted]
        slots, lengths, prefixes = queued_copy(torch.tensor(packed), device).split([1, 1, width], dim=1)
        slots = slots[:, 0]
        for sentence in admitted:
            self._searching[sentence.slot] = sentence
        self._prefixes[slots] = prefixes
        self._prefix_lengths[slots] = lengths[:, 0]
        # Scalars go in with index_fill_: indexed assignment of a Python number copies it from the
        # host first, which waits for the device's queue (the admission just launched).
        self._steps.index_fill_(0, slots, 0)
        self._ended_count.index_fill_(0, slots, 0)
        self._searching_mask.index_fill_(0, slots, True)
        # Every beam starts from the start token; only the first counts, so the first step expands one beam.
        rows = (slots[:, None] * beam + torch.arange(beam, device=device)).view(-1)
        self._tokens.index_fill_(0, rows, self.options.start_id)
        first = torch.full((len(admitted), beam), self._lowest, device=device)
        first[:, 0] = 0.0
        self._scores[rows] = first.view(-1)

    def _leave(self, slots: list[int]) -> None:
        for slot in slots:
            del self._searching[slot]
            heapq.heappush(self._free, slot)
        beam, device = self.options.beam_size, self.model.device
        index = queued_copy(torch.tensor(slots), device)
        self._searching_mask.index_fill_(0, index, False)
        rows = (index[:, None] * beam + torch.arange(beam, device=device)).view(-1)
        self._tokens.index_fill_(0, rows, 0)
        self._scores.index_fill_(0, rows, self._lowest)


def top_of_rows(values: torch.Tensor, count: int, passes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``count`` best values and their columns, highest first: in one selection over the
    row (``passes`` 1), or in ``row_top``'s two."""
    return row_top(values, count) if passes == 2 else values.topk(count, dim=-1)


def row_top(values: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``values.topk(count, dim=-1)`` of a ``[rows, width]`` tensor, in two passes: the best of each
    chunk of ``TOP_CHUNK`` columns (and of the columns past the last whole chunk), then the best of
    those, highest first. The same values and columns where no two tie."""
    rows, width = values.shape
    whole = width // TOP_CHUNK * TOP_CHUNK
    if whole < 2 * TOP_CHUNK:
        return values.topk(count, dim=-1)
    best, columns = values[:, :whole].view(rows, -1, TOP_CHUNK).topk(count, dim=-1)  # [rows, chunks, count]
    columns = columns + torch.arange(0, whole, TOP_CHUNK, device=values.device)[:, None]
    best, columns = best.view(rows, -1), columns.view(rows, -1)
    if whole < width:
        rest, rest_columns = values[:, whole:].topk(min(count, width - whole), dim=-1)
        best, columns = torch.cat([best, rest], dim=1), torch.cat([columns, rest_columns + whole], dim=1)
    best, chosen = best.topk(count, dim=-1)
    return best, columns.gather(1, chosen)


def beam_search(
    model: NllbModel,
    sources: list[list[int]],
    prefixes: list[list[int]],
    options: SearchOptions,
    top_passes: int = 1,
) -> list[Hypothesis]:
    """The best hypothesis of each source, each decoded after its own forced ``prefix``."""
    search = BeamSearch(model, options, capacity=len(sources), top_passes=top_passes)
    tickets = [search.add(source, prefix) for source, prefix in zip(sources, prefixes, strict=True)]
    results: dict[int, Hypothesis] = {}
    while search.busy:
        results.update(search.step())
    return [results[ticket] for ticket in tickets]
