"""The two ways a batch of windows is encoded and decoded; ``SpeechToText`` holds one of them.

- ``CTranslate2Backend``: CTranslate2's ``generate`` (greedy or beam search), on encoder states
  from CTranslate2 or, on a GPU, from the torch encoder (``encoder.py``: flash attention);
  languages detected by CTranslate2's ``detect_language``.
- ``TorchBackend``: the torch encoder and the torch greedy decoder (``decoder.py``: CUDA graphs);
  languages read from the decoder's first step.

Both answer, per request, the language it is decoded in (given, or the likeliest of the role's
languages) and, per window, its ``WhisperDecoding``.
"""

from __future__ import annotations

import threading
from typing import Protocol

import ctranslate2
import numpy as np
import torch

from contract.records import AUTO, SttRequest
from milo_voice.roles.whisper.decoder import WHISPER_TEXT_CONTEXT, WhisperDecoder, WhisperDecoding
from milo_voice.roles.whisper.encoder import WhisperEncoder
from milo_voice.roles.whisper.transcripts import DecodingLimits, Language, Prompts, pick_language
from milo_voice.roles.whisper.windows import Window

Features = np.ndarray | torch.Tensor


class Backend(Protocol):
    def decode(
        self, requests: list[SttRequest], windows: list[Window], features: Features
    ) -> tuple[list[Language], list[WhisperDecoding]]: ...


class CTranslate2Backend:
    def __init__(
        self,
        model: ctranslate2.models.Whisper,
        prompts: Prompts,
        limits: DecodingLimits,
        beam_size: int,
        encoder: WhisperEncoder | None = None,
    ) -> None:
        self.model = model
        self.prompts = prompts
        self.limits = limits
        self.beam_size = beam_size
        self.encoder = encoder

    def decode(
        self, requests: list[SttRequest], windows: list[Window], features: Features
    ) -> tuple[list[Language], list[WhisperDecoding]]:
        # ``_owner`` holds the memory the ``encoded`` view reads: it must live until generate is done.
        encoded, _owner = self.encode(features)
        languages = self._choose_languages(requests, windows, encoded)
        prompts = [self.prompts(languages[w.request][0]) for w in windows]
        results = self.model.generate(
            encoded,
            prompts,
            beam_size=self.beam_size,
            # CTranslate2 decodes at most half of ``max_length`` new tokens (whisper.cc; Whisper's own
            # sample_len is n_text_ctx // 2), so asking for N new tokens means max_length 2N.
            max_length=min(2 * self.limits.new_tokens, WHISPER_TEXT_CONTEXT),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=list(self.limits.suppress),
        )
        # ``scores`` is the log-probability normalised by length; recover the sum over tokens.
        return languages, [
            WhisperDecoding(r.sequences_ids[0], r.scores[0] * max(len(r.sequences_ids[0]), 1), r.no_speech_prob)
            for r in results
        ]

    def encode(self, features: Features) -> tuple[ctranslate2.StorageView, Features]:
        """Encoder states for ``generate``, and the array whose memory they borrow."""
        if self.encoder is None:
            return self.model.encode(ctranslate2.StorageView.from_array(_ct2_array(features)), to_cpu=False), features
        states = self.encoder(torch.as_tensor(features))
        return ctranslate2.StorageView.from_array(_ct2_array(states)), states

    def _choose_languages(
        self, requests: list[SttRequest], windows: list[Window], encoded: ctranslate2.StorageView
    ) -> list[Language]:
        """(language, probability) per request; detection is limited to the role's languages."""
        chosen: list[Language] = [(r.language, 1.0) for r in requests]
        auto = [i for i, r in enumerate(requests) if r.language == AUTO]
        if not auto:
            return chosen
        first_window: dict[int, int] = {}
        for position, window in enumerate(windows):
            first_window.setdefault(window.request, position)
        # detect_language runs on the whole batch; its cost is one decoder step.
        detected = self.model.detect_language(encoded)
        for i in auto:
            probabilities = dict(detected[first_window[i]])
            chosen[i] = pick_language({lang: probabilities.get(f"<|{lang}|>", 0.0) for lang in self.prompts.languages})
        return chosen


class TorchBackend:
    def __init__(
        self,
        encoder: WhisperEncoder,
        decoder: WhisperDecoder,
        prompts: Prompts,
        limits: DecodingLimits,
        decoder_batch: int,
    ) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.prompts = prompts
        self.limits = limits
        self.decoder_batch = decoder_batch
        # The decoder's step buffers serve one batch at a time.
        self._decoding = threading.Lock()

    def decode(
        self, requests: list[SttRequest], windows: list[Window], features: Features
    ) -> tuple[list[Language], list[WhisperDecoding]]:
        with self._decoding:
            return self._decode_chunks(requests, windows, self.encoder(torch.as_tensor(features)))

    def _decode_chunks(
        self, requests: list[SttRequest], windows: list[Window], states: torch.Tensor
    ) -> tuple[list[Language], list[WhisperDecoding]]:
        """Decode ``decoder_batch`` windows at a time; a request's language comes from its first window."""
        chosen: dict[int, Language] = {i: (r.language, 1.0) for i, r in enumerate(requests) if r.language != AUTO}
        languages = self.prompts.languages
        language_ids = [self.prompts.language_ids[lang] for lang in languages]
        decodings: list[WhisperDecoding] = []
        for begin in range(0, len(windows), self.decoder_batch):
            chunk = windows[begin : begin + self.decoder_batch]
            # The <|startoftranscript|> step both starts decoding and detects the language.
            session = self.decoder.start(states[begin : begin + len(chunk)])
            first_rows = {}  # windows come in request order: a request's first window is met first
            for row, window in enumerate(chunk):
                if window.request not in chosen:
                    first_rows.setdefault(window.request, row)
            if first_rows:
                rows = list(first_rows.values())
                probabilities = self.decoder.language_probabilities(session.sot_logits[rows], language_ids)
                for request, row_probabilities in zip(first_rows, probabilities, strict=True):
                    chosen[request] = pick_language(dict(zip(languages, row_probabilities.tolist(), strict=True)))
            prompts = [self.prompts(chosen[w.request][0]) for w in chunk]
            decodings += session.generate(
                prompts, self.limits.new_tokens, list(self.limits.suppress), suppress_blank=True
            )
        return [chosen[i] for i in range(len(requests))], decodings


def _ct2_array(array: Features) -> Features:
    """What StorageView.from_array reads without a copy: NumPy, or a CUDA tensor whose work is done.

    A CUDA tensor is read in place through its __cuda_array_interface__; CTranslate2 reads it
    on its own stream, so torch's stream must have finished writing it first.
    """
    if isinstance(array, np.ndarray):
        return array
    if array.is_cuda:
        torch.cuda.current_stream(array.device).synchronize()
        return array
    return array.numpy()
