"""``TorchTranslator``: the part of ``ctranslate2.Translator.translate_batch`` the translation role
calls, computed by ``NllbModel`` and ``beam_search``, from the same model directory; and ``search``,
a ``BeamSearch`` that sentences join and leave step by step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from milo_voice.roles.nllb.kernels import CHOSEN_AT_LOAD, UNTIMED, StepKernels
from milo_voice.roles.nllb.model import NllbModel, special_ids
from milo_voice.roles.nllb.search import BeamSearch, Hypothesis, SearchOptions, beam_search
from milo_voice.roles.nllb.tuning import choose

# CTranslate2's compute types to what torch computes in: int8 weights are dequantised.
_DTYPES = {"float16": torch.float16, "int8_float16": torch.float16, "bfloat16": torch.bfloat16,
           "int8_bfloat16": torch.bfloat16}  # fmt: skip


def torch_dtype(compute_type: str) -> torch.dtype:
    return _DTYPES.get(compute_type, torch.float32)


@dataclass(frozen=True)
class TranslationResult:
    """What the role reads of CTranslate2's result: the best hypothesis, end token removed, and its score."""

    hypotheses: list[list[str]]
    scores: list[float]


class TorchTranslator:
    """``max_sentences``: the most sentences searched together; a batch with more is searched in
    chunks, so that the decoder's buffers (its key/value cache grows with the rows) stay bounded
    and their graphs stay the ones captured at load. ``search_graphs``: a ``search``'s whole steps
    are CUDA graphs (``BeamSearch``), where the model runs graphs. ``kernels``: how a step attends and
    takes each row's best logits, chosen by ``warm_up`` (``milo_voice.roles.nllb.tuning``)."""

    def __init__(
        self,
        model_dir: Path,
        vocabulary: list[str],
        device: str,
        dtype: torch.dtype,
        max_length: int,
        max_sentences: int,
        search_graphs: bool = True,
        kernels: StepKernels = CHOSEN_AT_LOAD,
    ) -> None:
        self.model = NllbModel.from_model_dir(model_dir, device, dtype, max_length)
        self.kernels = kernels
        self.chosen = UNTIMED  # until ``warm_up`` chooses
        self.search_graphs = search_graphs and self.model.cuda_graphs
        self.tokens = vocabulary
        self.ids_by_token = {token: i for i, token in enumerate(vocabulary)}
        self.start_id, self.end_id, self.unk_id = special_ids(model_dir, self.ids_by_token)
        self.max_sentences = max_sentences

    def warm_up(self, beam_size: int) -> None:
        """Choose the step's kernels for the most rows searched at once, then capture the graphs."""
        rows = self.max_sentences * beam_size
        self.chosen = choose(self.model, self.kernels, rows, 2 * beam_size)
        self.model.warm_up(self.max_sentences, beam_size)

    def options(self, beam_size: int, max_decoding_length: int, min_decoding_length: int = 0) -> SearchOptions:
        return SearchOptions(self.start_id, self.end_id, beam_size, max_decoding_length, min_decoding_length)

    def translate_batch(
        self,
        source: list[list[str]],
        target_prefix: list[list[str]],
        beam_size: int = 2,
        max_decoding_length: int = 256,
        min_decoding_length: int = 0,
        return_scores: bool = True,
    ) -> list[TranslationResult]:
        options = self.options(beam_size, max_decoding_length, min_decoding_length)
        sources, prefixes = [self.ids(s) for s in source], [self.ids(p) for p in target_prefix]
        best = []
        for begin in range(0, len(sources), self.max_sentences):
            end = begin + self.max_sentences
            best += beam_search(self.model, sources[begin:end], prefixes[begin:end], options, self.chosen.top_passes)
        return [self.result(hypothesis) for hypothesis in best]

    def search(self, options: SearchOptions) -> BeamSearch:
        """A search that holds up to ``max_sentences`` sentences at once, the rows warmed up at load,
        its steps recorded now where ``search_graphs``."""
        search = BeamSearch(
            self.model, options, self.max_sentences, graphs=self.search_graphs, top_passes=self.chosen.top_passes
        )
        search.warm_up()
        return search

    def ids(self, tokens: list[str]) -> list[int]:
        return [self.ids_by_token.get(token, self.unk_id) for token in tokens]

    def result(self, hypothesis: Hypothesis) -> TranslationResult:
        """A hypothesis as CTranslate2 returns it: tokens, without the end token."""
        tokens = hypothesis.tokens[:-1] if hypothesis.tokens[-1:] == [self.end_id] else hypothesis.tokens
        return TranslationResult([[self.tokens[i] for i in tokens]], [hypothesis.score])
