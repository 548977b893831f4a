"""Translation with NLLB-200 on CTranslate2.

Every request carries its own source and target language, and the language codes are
put into the token sequence of that request only: there is no tokenizer-wide
"source language" to set, so concurrent requests in other languages cannot see each
other's setting (a shared ``src_lang`` once made the product answer 500s under load).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ctranslate2
import sentencepiece as spm

# ISO 639-1 codes that Milo Voice speaks, to NLLB's FLORES-200 codes.
NLLB_CODES = {"mg": "plt_Latn", "fr": "fra_Latn", "en": "eng_Latn"}
MAX_TEXT_CHARS = 5000


class TranslateInputError(ValueError):
    """A request that cannot be translated (empty text, unknown or equal languages)."""


@dataclass(frozen=True)
class TranslateRequest:
    text: str
    source: str
    target: str


@dataclass(frozen=True)
class Translation:
    text: str
    source: str
    target: str
    score: float  # mean log-probability per generated token


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
        min_decoding_length: int = 1,
        max_input_tokens: int = 512,
        intra_threads: int = 0,
    ) -> None:
        path = Path(model_path)
        self._translator = ctranslate2.Translator(
            str(path), device=device, device_index=device_index, compute_type=compute_type, intra_threads=intra_threads
        )
        self._sentencepiece = spm.SentencePieceProcessor(model_file=str(path / "sentencepiece.bpe.model"))
        unknown = set(languages) - set(NLLB_CODES)
        if unknown:
            raise ValueError(f"no NLLB code for languages {sorted(unknown)}")
        self.languages = tuple(languages)
        self.beam_size = beam_size
        self.max_decoding_length = max_decoding_length
        # Above 1 for benchmarks only: seeded weights would otherwise stop at random lengths.
        self.min_decoding_length = min_decoding_length
        self.max_input_tokens = max_input_tokens

    def validate(self, request: TranslateRequest) -> None:
        for field_name, language in (("source", request.source), ("target", request.target)):
            if language not in self.languages:
                raise TranslateInputError(f"{field_name} language {language!r} is not one of {list(self.languages)}")
        if request.source == request.target:
            raise TranslateInputError(f"source and target are both {request.source!r}")
        if not request.text or not request.text.strip():
            raise TranslateInputError("text is empty")
        if len(request.text) > MAX_TEXT_CHARS:
            raise TranslateInputError(f"text is longer than {MAX_TEXT_CHARS} characters")

    def translate(self, text: str, source: str, target: str) -> Translation:
        return self.translate_batch([TranslateRequest(text, source, target)])[0]

    def translate_batch(self, requests: list[TranslateRequest]) -> list[Translation]:
        for request in requests:
            self.validate(request)
        sources = [self._source_tokens(r) for r in requests]
        results = self._translator.translate_batch(
            sources,
            target_prefix=[[NLLB_CODES[r.target]] for r in requests],
            beam_size=self.beam_size,
            max_decoding_length=self.max_decoding_length,
            min_decoding_length=self.min_decoding_length,
            return_scores=True,
        )
        translations = []
        for request, result in zip(requests, results, strict=True):
            # The first token is the target language code that we forced.
            tokens = result.hypotheses[0][1:]
            translations.append(
                Translation(
                    text=self._sentencepiece.decode(tokens).strip(),
                    source=request.source,
                    target=request.target,
                    score=float(result.scores[0]),
                )
            )
        return translations

    def _source_tokens(self, request: TranslateRequest) -> list[str]:
        pieces = self._sentencepiece.encode(request.text.strip(), out_type=str)[: self.max_input_tokens]
        return [NLLB_CODES[request.source], *pieces, "</s>"]
