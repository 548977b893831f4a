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
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field

import torch

from milo_voice.roles.nllb.model import NllbModel

PREFIX_PENALTY = -1e10  # CTranslate2's score for the candidates a forced prefix replaces


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
    step: int = 0
    sequences: list[list[int]] = field(default_factory=list)  # each beam's tokens so far
    finished: list[Hypothesis] = field(default_factory=list)


class BeamSearch:
    """Sentences searched together over ``model``, a step at a time.

    ``capacity``: the most sentences searching at once (their rows are the decoder's batch); those
    added beyond it wait, in the order they came, for a sentence to end. Not thread-safe: one
    caller adds, steps and cancels.
    """

    def __init__(self, model: NllbModel, options: SearchOptions, capacity: int) -> None:
        if options.beam_size < 2:
            raise ValueError("beam search needs beam_size >= 2 (CTranslate2 decodes beam 1 greedily)")
        self.model, self.options, self.capacity = model, options, capacity
        self.max_length = min(options.max_length, model.max_length)
        self._tickets = itertools.count()
        self._waiting: deque[_Sentence] = deque()
        self._searching: dict[int, _Sentence] = {}  # by slot
        self._free: list[int] = list(range(capacity))  # a heap: the lowest slot first keeps the rows few
        self._lowest = torch.finfo(torch.float32).min
        rows = capacity * options.beam_size
        self._tokens, self._scores = [0] * rows, [self._lowest] * rows

    @property
    def busy(self) -> bool:
        return bool(self._searching or self._waiting)

    def waiting(self) -> set[int]:
        """The tickets of the sentences that still wait for rows (sentences added since the last
        step take the free rows at the next one: until then they wait too)."""
        return {sentence.ticket for sentence in self._waiting}

    def add(self, source: list[int], prefix: list[int]) -> int:
        """Queue ``source``, decoded after its forced ``prefix``; its ticket names its result."""
        sentence = _Sentence(next(self._tickets), source, prefix)
        self._waiting.append(sentence)
        return sentence.ticket

    def cancel(self, tickets: set[int]) -> None:
        """Drop these sentences, waiting or searching (their client has gone)."""
        self._waiting = deque(s for s in self._waiting if s.ticket not in tickets)
        for slot, sentence in list(self._searching.items()):
            if sentence.ticket in tickets:
                self._leave(slot)

    @torch.inference_mode()
    def step(self) -> dict[int, Hypothesis]:
        """Admit the waiting sentences that find rows, decode one token of every searching one, and
        return the best hypothesis of each that is done, by ticket."""
        self._admit()
        if not self._searching:
            return {}
        beam, end, model = self.options.beam_size, self.options.end_id, self.model
        groups = max(self._searching) + 1
        rows = groups * beam
        positions = [0] * rows
        for slot, sentence in self._searching.items():
            positions[slot * beam : (slot + 1) * beam] = [sentence.step] * beam
        source_length = max(len(s.source) for s in self._searching.values())
        logits = model.step(
            torch.tensor(self._tokens[:rows]).to(model.device), torch.tensor(positions).to(model.device), source_length
        )
        if self.options.min_length:
            early = [row for row, position in enumerate(positions) if position < self.options.min_length]
            logits[early, end] = self._lowest
        log_probs = torch.log_softmax(logits, dim=-1) + torch.tensor(self._scores[:rows], device=model.device)[:, None]
        top_scores, top_flat = log_probs.view(groups, -1).topk(2 * beam, dim=-1)
        vocabulary = log_probs.shape[-1]
        flat, step_scores = top_flat.cpu().tolist(), top_scores.cpu().tolist()  # the step's one wait
        origins = list(range(rows))  # each row's cache comes from the row that continues into it
        done: dict[int, Hypothesis] = {}
        for slot, sentence in list(self._searching.items()):
            continued = self._advance(sentence, flat[slot], step_scores[slot], vocabulary)
            if continued is None:
                done[sentence.ticket] = _best(sentence.finished, self.options.length_penalty)
                self._leave(slot)
                continue
            sequences = []
            for k, (origin, word, score) in enumerate(continued):
                row = slot * beam + k
                origins[row] = slot * beam + origin
                self._tokens[row], self._scores[row] = word, score
                sequences.append([*sentence.sequences[origin], word])
            sentence.sequences = sequences
        if origins != list(range(rows)):  # every beam went on from itself: nothing moves
            length = max(positions) + 1
            model.reorder(torch.tensor(origins, dtype=torch.long), length)
        for sentence in self._searching.values():
            sentence.step += 1
        return done

    def _admit(self) -> None:
        admitted = []
        while self._waiting and self._free:
            sentence = self._waiting.popleft()
            sentence.slot = heapq.heappop(self._free)
            admitted.append(sentence)
        if not admitted:
            return
        beam = self.options.beam_size
        states, present = self.model.encode([s.source for s in admitted])
        self.model.place(states, present, [s.slot * beam for s in admitted], beam)
        for sentence in admitted:
            self._searching[sentence.slot] = sentence
            sentence.sequences = [[] for _ in range(beam)]
            first = sentence.slot * beam
            # Every beam starts from the start token; only the first counts, so the first step
            # expands one beam.
            self._tokens[first : first + beam] = [self.options.start_id] * beam
            self._scores[first : first + beam] = [0.0] + [self._lowest] * (beam - 1)

    def _leave(self, slot: int) -> None:
        del self._searching[slot]
        heapq.heappush(self._free, slot)
        beam = self.options.beam_size
        self._tokens[slot * beam : (slot + 1) * beam] = [0] * beam
        self._scores[slot * beam : (slot + 1) * beam] = [self._lowest] * beam

    def _advance(
        self, sentence: _Sentence, flat: list[int], scores: list[float], vocabulary: int
    ) -> list[tuple[int, int, float]] | None:
        """One step of one sentence: its ``2 x beam_size`` best candidates (flat indexes over its
        beams' vocabularies, and their scores) to the (origin beam, token, score) each beam goes on
        with, or None when the sentence is done (its hypotheses in ``finished``)."""
        beam, end, candidates = self.options.beam_size, self.options.end_id, 2 * self.options.beam_size
        step, prefix = sentence.step, sentence.prefix
        words = [f % vocabulary for f in flat]
        origins = [f // vocabulary for f in flat]
        if step <= len(prefix):
            for k in range(candidates):
                if step < len(prefix):
                    words[k], scores[k] = prefix[step], 0.0 if k == 0 else PREFIX_PENALTY
                elif k > 0 and words[k] == end:
                    words[k], scores[k] = 0, PREFIX_PENALTY
                else:
                    continue
                origins[k] = 0
        last_step = step + 1 == self.max_length
        continued = []
        secondary = beam
        for k in range(beam):
            chosen = k
            if (words[k] == end and step >= len(prefix)) or last_step:
                sentence.finished.append(Hypothesis([*sentence.sequences[origins[k]], words[k]], scores[k]))
                for j in range(secondary, candidates):
                    if words[j] != end:
                        chosen, secondary = j, j + 1
                        break
            continued.append((origins[chosen], words[chosen], scores[chosen]))
        if last_step or len(sentence.finished) >= beam:
            return None
        return continued


def beam_search(
    model: NllbModel, sources: list[list[int]], prefixes: list[list[int]], options: SearchOptions
) -> list[Hypothesis]:
    """The best hypothesis of each source, each decoded after its own forced ``prefix``."""
    search = BeamSearch(model, options, capacity=len(sources))
    tickets = [search.add(source, prefix) for source, prefix in zip(sources, prefixes, strict=True)]
    results: dict[int, Hypothesis] = {}
    while search.busy:
        results.update(search.step())
    return [results[ticket] for ticket in tickets]


def _best(hypotheses: list[Hypothesis], length_penalty: float) -> Hypothesis:
    scored = [Hypothesis(h.tokens, h.score / len(h.tokens) ** length_penalty) for h in hypotheses]
    return max(scored, key=lambda h: h.score)
