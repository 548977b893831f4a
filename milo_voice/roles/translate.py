"""Translation with NLLB-200: CTranslate2's ``Translator``, and on a GPU, for batches of up to
``MAX_SENTENCES`` sentences, the same model and the same beam search in torch with CUDA graphs
(``milo_voice/roles/nllb``), from the one model directory.

Every request carries its own source and target language, and the language codes are
put into the token sequence of that request only: there is no tokenizer-wide
"source language" to set, so concurrent requests in other languages cannot see each
other's setting (a shared ``src_lang`` once made the product answer 500s under load).
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Literal

import ctranslate2
import sentencepiece as spm

from contract.records import InputError, TranslateRequest, Translation
from milo_voice.roles.nllb.kernels import CHOSEN_AT_LOAD, ChosenKernels, StepKernels
from milo_voice.weights import identity

# ISO 639-1 codes that Milo Voice speaks, to NLLB's FLORES-200 codes.
NLLB_CODES = {"mg": "plt_Latn", "fr": "fra_Latn", "en": "eng_Latn"}
MAX_TEXT_CHARS = 5000
# Written beside the converted weights (milo_voice/weights): {"max_positions": N}.
LIMITS_FILE = "limits.json"
# Where a text is cut into the pieces translated one by one: after a sentence's end, and at
# line breaks (kept as they are); a sentence beyond the model's limit is cut at its clauses.
SENTENCE_BREAK = re.compile(r"(\s*\n\s*|(?<=[.!?\u2026])\s+)")
CLAUSE_BREAK = re.compile(r"((?<=[,;:])\s+)")


def read_vocabulary(folder: Path) -> list[str]:
    """A converted model's tokens, by id (CTranslate2 writes ``shared_vocabulary.json`` or ``.txt``)."""
    if (folder / "shared_vocabulary.json").is_file():
        return list(json.loads((folder / "shared_vocabulary.json").read_text(encoding="utf-8")))
    return (folder / "shared_vocabulary.txt").read_text(encoding="utf-8").splitlines()


# "torch+ctranslate2": the torch engine for a batch of up to ``MAX_SENTENCES`` sentences, CTranslate2
# for a larger one (what "auto" is on a GPU with a beam of 2 or more).
Engine = Literal["auto", "ctranslate2", "torch", "torch+ctranslate2"]
# The most sentences the torch engine searches together: its graphs are captured at load for up to
# this many, times the beam. Beyond it, CTranslate2 (where loaded) is faster than the torch engine's
# chunks, whose steps add up, while CTranslate2's batch grows for about the same time
# (docs/benchmarks.md, section 4).
MAX_SENTENCES = 64


def resolved_engine(engine: Engine, device: str, beam_size: int) -> Engine:
    """What "auto" is on ``device``: the torch engine beside CTranslate2 for beam search on a GPU."""
    if engine != "auto":
        return engine
    return "torch+ctranslate2" if device == "cuda" and beam_size >= 2 else "ctranslate2"


def times_the_gpu_at_load(engine: Engine, device: str, beam_size: int, kernels: StepKernels) -> bool:
    """Whether a ``Translator`` of these options times its step's kernels on the GPU as it loads:
    the torch engine on a GPU, with a way left to "auto" (``nllb/tuning.py``)."""
    torch_engine = "torch" in resolved_engine(engine, device, beam_size).split("+")
    return device == "cuda" and torch_engine and kernels.timed_at_load


class TranslateInputError(InputError):
    """A request that cannot be translated (empty text, unknown or equal languages)."""


class Translator:
    """NLLB in CTranslate2 format, with its ``sentencepiece.bpe.model`` in the same folder."""

    def __init__(
        self,
        model_path: str | Path,
        device: str = "cpu",
        device_index: int = 0,
        compute_type: str = "default",
        languages: tuple[str, ...] = ("mg", "fr", "en"),
        beam_size: int = 2,
        max_decoding_length: int = 256,
        max_input_tokens: int = 512,
        intra_threads: int = 0,
        engine: Engine = "auto",
        search_sentences: int | None = None,
        search_graphs: bool = True,
        kernels: StepKernels = CHOSEN_AT_LOAD,
    ) -> None:
        """``engine``: "torch" decodes in torch with CUDA graphs; "ctranslate2" in CTranslate2;
        "torch+ctranslate2" loads both and picks by the batch's sentences. "auto" is that on a GPU
        with a beam of 2 or more (CTranslate2's decoding of a small batch there is paced by kernel
        launches), and CTranslate2 elsewhere. ``search_sentences``: the most sentences the torch
        engine searches at once (default ``MAX_SENTENCES``), its graphs captured at load.
        ``search_graphs``: each step of a step-level search is one CUDA graph (on a GPU), not only
        the decoder's part of it. ``kernels``: how the torch engine's steps attend and take each
        row's best logits ("auto": the faster, timed at load)."""
        path = Path(model_path)
        self.revision = identity.read(path).revision
        self.engine: Engine = resolved_engine(engine, device, beam_size)
        engines = self.engine.split("+")
        self._torch: Any = None
        self._ctranslate2: Any = None
        if "torch" in engines:
            from milo_voice.roles.nllb.engine import TorchTranslator, torch_dtype

            if beam_size < 2:
                raise ValueError("the torch engine runs beam search: beam_size 2 or more")
            self._torch = TorchTranslator(
                path, read_vocabulary(path), f"{device}:{device_index}" if device == "cuda" else device,
                torch_dtype(compute_type), max_decoding_length, search_sentences or MAX_SENTENCES, search_graphs,
                kernels,
            )  # fmt: skip
        if "ctranslate2" in engines:
            self._ctranslate2 = ctranslate2.Translator(
                str(path), device=device, device_index=device_index, compute_type=compute_type,
                intra_threads=intra_threads,
            )  # fmt: skip
        self._sentencepiece = spm.SentencePieceProcessor(model_file=str(path / "sentencepiece.bpe.model"))
        unknown = set(languages) - set(NLLB_CODES)
        if unknown:
            raise ValueError(f"no NLLB code for languages {sorted(unknown)}")
        self.languages = tuple(languages)
        # Weights converted without their language codes would turn every code into <unk>.
        vocabulary = set(read_vocabulary(path))
        absent = sorted(NLLB_CODES[lang] for lang in languages if NLLB_CODES[lang] not in vocabulary)
        if absent:
            raise ValueError(f"{path}: the vocabulary has no language code {', '.join(absent)}")
        self.beam_size = beam_size
        self.max_decoding_length = max_decoding_length
        # Source positions hold the language code, the text and the end token; target positions
        # the language code and the translation.
        positions = _max_positions(path)
        self.max_input_tokens = min(max_input_tokens, positions - 2) if positions else max_input_tokens
        if positions:
            self.max_decoding_length = min(max_decoding_length, positions - 1)
        if self._torch is not None:
            self._torch.warm_up(beam_size)

    @property
    def step_kernels(self) -> ChosenKernels | None:
        """The ways the torch engine's steps run, chosen at load; None without a torch engine."""
        return self._torch.chosen if self._torch is not None else None

    def engine_for(self, sentences: int) -> Any:
        """What translates a batch of ``sentences``: the torch engine up to the most it searches at
        once, CTranslate2 beyond where it is loaded too (the torch engine alone searches in chunks)."""
        if self._torch is not None and (self._ctranslate2 is None or sentences <= self._torch.max_sentences):
            return self._torch
        return self._ctranslate2

    def _checked_pieces(self, request: TranslateRequest) -> list[tuple[list[str], str]]:
        """``request`` checked (``TranslateInputError``), and its text as ``_pieces`` (which refuses a
        sentence too long): what is checked and what is translated are tokenised once."""
        for field_name, language in (("source", request.source), ("target", request.target)):
            if language not in self.languages:
                raise TranslateInputError(f"{field_name} language {language!r} is not one of {list(self.languages)}")
        if request.source == request.target:
            raise TranslateInputError(f"source and target are both {request.source!r}")
        if not request.text or not request.text.strip():
            raise TranslateInputError("text is empty")
        if len(request.text) > MAX_TEXT_CHARS:
            raise TranslateInputError(f"text is longer than {MAX_TEXT_CHARS} characters")
        return self._pieces(request.text)

    def _pieces(self, text: str) -> list[tuple[list[str], str]]:
        """``text`` as the token pieces translated one by one, each with the text that follows it.

        Sentences, cut at their clauses when one is beyond ``max_input_tokens``; the breaks
        between them (spaces, line and paragraph breaks) are kept to join the translations.
        """
        pieces: list[tuple[list[str], str]] = []
        parts = SENTENCE_BREAK.split(text.strip())
        for sentence, after in zip(parts[::2], [*parts[1::2], ""], strict=True):
            tokens = self._sentencepiece.encode(sentence, out_type=str)
            if len(tokens) <= self.max_input_tokens:
                if tokens:
                    pieces.append((tokens, after))
                elif pieces:  # nothing to translate: keep the break
                    pieces[-1] = (pieces[-1][0], pieces[-1][1] + after)
                continue
            clauses = CLAUSE_BREAK.split(sentence)
            for clause, clause_after in zip(clauses[::2], [*clauses[1::2], after], strict=True):
                clause_tokens = self._sentencepiece.encode(clause, out_type=str)
                if len(clause_tokens) > self.max_input_tokens:
                    raise TranslateInputError(
                        f"a sentence of {len(clause_tokens)} tokens without a break is longer than the "
                        f"model's limit of {self.max_input_tokens} tokens: split it"
                    )
                if clause_tokens:
                    pieces.append((clause_tokens, clause_after))
        return pieces

    def decoding_options(self) -> dict[str, Any]:
        """CTranslate2's search options for every piece (a subclass may add its own)."""
        return {"beam_size": self.beam_size, "max_decoding_length": self.max_decoding_length}

    def reached_output_limit(self, hypothesis: list[str]) -> bool:
        """Whether a piece's translation stopped at the output limit instead of ending: the end
        token is not in the hypothesis, so one that fills the limit was cut short."""
        return len(hypothesis) >= self.max_decoding_length

    def translate(self, text: str, source: str, target: str) -> Translation:
        """One text; raises ``TranslateInputError`` where it is refused."""
        result = self.translate_batch([TranslateRequest(text, source, target)])[0]
        if isinstance(result, InputError):
            raise result
        return result

    def translate_batch(self, requests: list[TranslateRequest]) -> list[Translation | InputError]:
        """Every request's sentences translated in one batch, then joined back per request.

        A refused request gets its error in place, and so does one whose translation of some
        piece reached the output limit without ending: a translation is whole or refused, never cut.
        """
        owners: list[int] = []
        sources: list[list[str]] = []
        breaks: list[str] = []
        refused: dict[int, InputError] = {}
        for i, request in enumerate(requests):
            try:
                pieces = self._checked_pieces(request)
            except InputError as exc:
                refused[i] = exc
                continue
            for tokens, after in pieces:
                owners.append(i)
                sources.append([NLLB_CODES[request.source], *tokens, "</s>"])
                breaks.append(after)
        # CTranslate2 refuses an empty batch: a batch of refusals computes nothing.
        results = (
            self.engine_for(len(sources)).translate_batch(
                sources,
                target_prefix=[[NLLB_CODES[requests[i].target]] for i in owners],
                return_scores=True,
                **self.decoding_options(),
            )
            if sources
            else []
        )
        pieces: list[list[tuple[Any, str]]] = [[] for _ in requests]
        for owner, after, result in zip(owners, breaks, results, strict=True):
            pieces[owner].append((result, after))
        return [refused.get(i) or self.joined(pieces[i]) for i in range(len(requests))]

    def joined(self, pieces: list[tuple[Any, str]]) -> Translation | TranslateInputError:
        """A request's translation from its pieces' results (CTranslate2's, or the torch engine's
        records of the same shape), each with the text that followed the piece.

        One piece whose translation reached the output limit without ending refuses the whole
        request: a translation is whole or refused, never cut.
        """
        texts, scores = [], []
        for result, after in pieces:
            hypothesis = result.hypotheses[0]
            if self.reached_output_limit(hypothesis):
                return TranslateInputError(
                    f"the translation of a sentence reached the model's output limit of {self.max_decoding_length} "
                    "tokens without ending: split the sentence"
                )
            # The first token is the target language code that we forced.
            texts.append(self._sentencepiece.decode(hypothesis[1:]).strip() + after)
            scores.append(float(result.scores[0]))
        return Translation("".join(texts).strip(), sum(scores) / max(len(scores), 1), self.revision)

    def stepwise(self) -> StepwiseTranslations:
        """Translations that join the torch engine's search step by step (``StepwiseTranslations``)."""
        if self._torch is None:
            raise ValueError(f"step-level batching needs the torch engine, not {self.engine!r}")
        options = self._torch.options(**self.decoding_options())
        return StepwiseTranslations(self, self._torch.search(options))


class StepwiseTranslations:
    """Requests translated together a decoding step at a time: one submitted while others decode
    joins them at the next step, and each is answered as soon as its last sentence is done.

    What step-level batching on a server drives (``milo_voice/serving/stepwise.py``): submit what
    arrived, advance a step, answer what is done; the GPU never waits for a whole batch to end
    before the next begins. A request is named by the caller's ``key``. Not thread-safe: one
    caller submits, advances and cancels.
    """

    def __init__(self, translator: Translator, search: Any) -> None:
        self._translator, self._search = translator, search
        self._pieces: dict[Hashable, list[tuple[Any, str] | None]] = {}  # a request's results so far
        self._breaks: dict[Hashable, list[str]] = {}
        self._owners: dict[int, tuple[Hashable, int]] = {}  # a search ticket: its request and piece

    def __contains__(self, key: Hashable) -> bool:
        return key in self._pieces

    @property
    def busy(self) -> bool:
        return self._search.busy

    @property
    def last_step_sentences(self) -> int:
        """The sentences the step collected last decoded."""
        return int(self._search.last_step_sentences)

    @property
    def in_flight(self) -> int:
        """Steps launched and not collected."""
        return int(self._search.in_flight)

    @property
    def max_in_flight(self) -> int:
        """Steps that may be launched before the oldest is collected."""
        return int(self._search.max_in_flight)

    def submit(self, key: Hashable, request: TranslateRequest) -> InputError | None:
        """Queue ``request``; its ``InputError`` now where it is refused (then nothing is queued)."""
        try:
            pieces = self._translator._checked_pieces(request)
        except InputError as exc:
            return exc
        source, target = NLLB_CODES[request.source], NLLB_CODES[request.target]
        torch_engine = self._translator._torch
        self._pieces[key] = [None] * len(pieces)
        self._breaks[key] = [after for _tokens, after in pieces]
        for index, (tokens, _after) in enumerate(pieces):
            ticket = self._search.add(torch_engine.ids([source, *tokens, "</s>"]), torch_engine.ids([target]))
            self._owners[ticket] = (key, index)
        return None

    def waiting(self) -> set[Hashable]:
        """The requests with a sentence that waits for rows: one the search's next step will not admit."""
        return {self._owners[ticket][0] for ticket in self._search.waiting()}

    def advance(self, steps: int) -> dict[Hashable, Translation | InputError]:
        """Decode up to ``steps`` steps of every request queued; each request done, answered."""
        done: dict[Hashable, Translation | InputError] = {}
        for _ in range(steps):
            if not self._search.busy:
                break
            self.launch()
            done.update(self.collect())
        return done

    def launch(self) -> None:
        """Queue the next step on the device (requests submitted so far join it where rows are
        free) without waiting for it: the caller's work runs while the device decodes, until
        ``collect``. Requests submitted meanwhile join the step after. A step may be launched
        before the last is collected: it is queued behind it."""
        self._search.launch()

    def launch_ahead(self) -> None:
        """Launch steps until ``max_in_flight`` are queued: a step behind the one decoding (none
        where no sentence searches)."""
        for _ in range(self.max_in_flight - self.in_flight):
            self._search.launch()

    def admit(self) -> None:
        """Let the requests submitted so far take the rows free now, while a step decodes: they
        join the next step launched, and their encoder pass is queued behind the steps launched."""
        self._search.admit()

    def collect(self) -> dict[Hashable, Translation | InputError]:
        """Wait for the oldest step launched; each request it finished, answered."""
        done: dict[Hashable, Translation | InputError] = {}
        torch_engine = self._translator._torch
        for ticket, hypothesis in self._search.collect().items():
            key, index = self._owners.pop(ticket)
            results = self._pieces[key]
            results[index] = (torch_engine.result(hypothesis), self._breaks[key][index])
            if all(r is not None for r in results):
                done[key] = self._translator.joined([r for r in results if r is not None])
                del self._pieces[key], self._breaks[key]
        return done

    def cancel(self, key: Hashable) -> None:
        """Drop a request (its client has gone): its sentences free their rows."""
        if self._pieces.pop(key, None) is None:
            return
        del self._breaks[key]
        tickets = {ticket for ticket, (owner, _index) in self._owners.items() if owner == key}
        for ticket in tickets:
            del self._owners[ticket]
        self._search.cancel(tickets)


def _max_positions(path: Path) -> int | None:
    limits = path / LIMITS_FILE
    return int(json.loads(limits.read_text())["max_positions"]) if limits.exists() else None
