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
"""

from __future__ import annotations

from dataclasses import dataclass

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


@torch.inference_mode()
def beam_search(
    model: NllbModel, sources: list[list[int]], prefixes: list[list[int]], options: SearchOptions
) -> list[Hypothesis]:
    """The best hypothesis of each source, each decoded after its own forced ``prefix``."""
    beam, end = options.beam_size, options.end_id
    if beam < 2:
        raise ValueError("beam search needs beam_size >= 2 (CTranslate2 decodes beam 1 greedily)")
    batch, candidates = len(sources), 2 * beam
    max_length = min(options.max_length, model.max_length)
    states, present = model.encode(sources)
    model.start(states, present, beam)
    rows = batch * beam
    tokens = torch.full((rows,), options.start_id, dtype=torch.long)
    lowest = torch.finfo(torch.float32).min
    scores = torch.tensor([0.0 if row % beam == 0 else lowest for row in range(rows)], device=model.device)
    sequences: list[list[int]] = [[] for _ in range(rows)]
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    done = [False] * batch
    for step in range(max_length):
        logits = model.step(tokens.to(model.device), step)
        if step < options.min_length:
            logits[:, end] = lowest
        log_probs = torch.log_softmax(logits, dim=-1) + scores[:, None]
        top_scores, top_flat = log_probs.view(batch, -1).topk(candidates, dim=-1)
        vocabulary = log_probs.shape[-1]
        flat, step_scores = top_flat.cpu().tolist(), top_scores.cpu().tolist()  # the step's one wait
        words = [[f % vocabulary for f in row] for row in flat]
        origins = [[i * beam + f // vocabulary for f in row] for i, row in enumerate(flat)]
        last_step = step + 1 == max_length
        next_rows: list[tuple[int, int]] = []  # per row: the (sentence, candidate) that continues there
        for i in range(batch):
            prefix = prefixes[i]
            if step <= len(prefix):
                for k in range(candidates):
                    if step < len(prefix):
                        words[i][k], step_scores[i][k] = prefix[step], 0.0 if k == 0 else PREFIX_PENALTY
                    elif k > 0 and words[i][k] == end:
                        words[i][k], step_scores[i][k] = 0, PREFIX_PENALTY
                    else:
                        continue
                    origins[i][k] = i * beam
            secondary = beam
            for k in range(beam):
                chosen = k
                if not done[i] and ((words[i][k] == end and step >= len(prefix)) or last_step):
                    tokens_so_far = [*sequences[origins[i][k]], words[i][k]]
                    finished[i].append(Hypothesis(tokens_so_far, step_scores[i][k]))
                    for j in range(secondary, candidates):
                        if words[i][j] != end:
                            chosen, secondary = j, j + 1
                            break
                next_rows.append((i, chosen))
            if not done[i] and (last_step or len(finished[i]) >= beam):
                done[i] = True
        if all(done):
            break
        origin_rows = [origins[i][k] for i, k in next_rows]
        sequences = [[*sequences[origin_rows[r]], words[i][k]] for r, (i, k) in enumerate(next_rows)]
        tokens = torch.tensor([words[i][k] for i, k in next_rows], dtype=torch.long)
        scores = torch.tensor([step_scores[i][k] for i, k in next_rows], device=model.device)
        if origin_rows != list(range(rows)):  # every beam went on from itself: nothing moves
            model.reorder(torch.tensor(origin_rows, dtype=torch.long), step + 1)
    return [_best(hypotheses, options.length_penalty) for hypotheses in finished]


def _best(hypotheses: list[Hypothesis], length_penalty: float) -> Hypothesis:
    scored = [Hypothesis(h.tokens, h.score / len(h.tokens) ** length_penalty) for h in hypotheses]
    return max(scored, key=lambda h: h.score)
