"""Speech to text with Whisper on CTranslate2 (the faster-whisper model format).

``SpeechToText.transcribe_batch`` takes many requests and decodes them together: every
30-second window of every request (``whisper/windows.py``) gets its features in one call
(``whisper/features.py``), is encoded in one call and decoded in one ``generate`` call, which
is what makes Triton's dynamic batching pay off. On a GPU both halves run in torch instead
(``whisper/encoder.py``: flash attention; ``whisper/decoder.py``: CUDA graphs), with the same
weights and the same decoding rules (``whisper/backends.py``). ``SttOptions`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer

from contract.records import AUTO, InputError, Segment, SttRequest, Transcription
from milo_voice.roles.refusals import compute_valid
from milo_voice.roles.whisper.backends import Backend, CTranslate2Backend, TorchBackend
from milo_voice.roles.whisper.decoder import SpecialTokens, WhisperDecoder
from milo_voice.roles.whisper.encoder import WhisperEncoder
from milo_voice.roles.whisper.features import Features, LogMelExtractor, cut_to, encoded_frames
from milo_voice.roles.whisper.transcripts import DecodingLimits, Prompts, transcription
from milo_voice.roles.whisper.windows import SAMPLE_RATE, WINDOW_SECONDS, plan_windows

# The activations' type by the model's compute type (int8 weights compute in float32, float16 or
# bfloat16): what CTranslate2's generate expects as encoder output, and what the torch encoder and
# decoder compute in.
_ACTIVATION_DTYPES = {
    "float32": torch.float32, "int8": torch.float32, "int8_float32": torch.float32, "int16": torch.float32,
    "float16": torch.float16, "int8_float16": torch.float16,
    "bfloat16": torch.bfloat16, "int8_bfloat16": torch.bfloat16,
}  # fmt: skip
Choice = Literal["auto", "ctranslate2", "torch"]
FeaturesChoice = Literal["auto", "numpy", "torch"]


class SttInputError(InputError):
    """A request that cannot be transcribed (empty or invalid audio, unknown language)."""


@dataclass(frozen=True)
class SttOptions:
    """How a ``SpeechToText`` decodes; "auto" picks what is fastest where the model runs.

    ``features``: faster-whisper's NumPy extractor ("numpy", as fast on a CPU) or one torch
    call per batch on the device ("torch", the default on a GPU). ``encoder``: CTranslate2's, or
    torch's ("torch", the default on a GPU: CTranslate2's PyPI build has no flash attention, and the
    encoder is most of a window's time there). ``decoder``: CTranslate2's ``generate`` or torch's
    greedy decoder ("torch", the default on a GPU with the torch encoder and beam size 1: CTranslate2
    launches hundreds of kernels per token, which at batch 1 made large-v3 decode at about 8 ms a
    token on an H100).

    ``min_encoded_seconds``: Whisper encodes every window over 30 s, a short one padded with
    silence, and on a CPU the encoder is most of a short question's time. Below 30, a window is
    encoded over its own length plus one second, and at least this long (``features.encoded_frames``).
    Whisper was trained on 30 s windows only: what a shorter one costs in accuracy, and gains in
    time, is measured side by side by ``loadtests/bench/stt_window.py`` (docs/benchmarks.md).
    """

    compute_type: str = "default"
    languages: tuple[str, ...] = ("mg", "fr")
    beam_size: int = 1
    max_new_tokens: int = 224
    # Timestamps give segments their times, at a price: CTranslate2 applies Whisper's timestamp
    # rules on every decoding step, which doubled the GPU time of a batch of 32.
    timestamps: bool = True
    cpu_threads: int = 0
    decoder_batch: int = 32  # windows the torch decoder decodes at once
    features: FeaturesChoice = "auto"
    encoder: Choice = "auto"
    decoder: Choice = "auto"
    min_encoded_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not 1.0 <= self.min_encoded_seconds <= WINDOW_SECONDS:
            raise ValueError(f"min_encoded_seconds must be from 1 to 30, not {self.min_encoded_seconds}")

    @classmethod
    def from_params(
        cls, params: dict[str, Any], compute_type: str, cpu_threads: int, on_gpu: bool = False
    ) -> SttOptions:
        """The options of a registry entry's ``params``; a ``gpu_`` key, where present, holds the value
        on a GPU (a GPU encodes the full window fast, so the cut is a CPU setting)."""
        encoded = "gpu_min_encoded_seconds" if on_gpu else "min_encoded_seconds"
        return cls(
            compute_type=compute_type,
            languages=tuple(params.get("languages", cls.languages)),
            beam_size=int(params.get("beam_size", cls.beam_size)),
            max_new_tokens=int(params.get("max_new_tokens", cls.max_new_tokens)),
            timestamps=bool(params.get("timestamps", cls.timestamps)),
            cpu_threads=cpu_threads,
            decoder_batch=int(params.get("decoder_batch", cls.decoder_batch)),
            features=params.get("features", "auto"),
            encoder=params.get("encoder", "auto"),
            decoder=params.get("decoder", "auto"),
            min_encoded_seconds=float(params.get(encoded, cls.min_encoded_seconds)),
        )


class SpeechToText:
    """Whisper transcription restricted to a set of languages (default Malagasy and French)."""

    def __init__(
        self, model_path: str, device: str = "cpu", device_index: int = 0, options: SttOptions | None = None
    ) -> None:
        options = options or SttOptions()
        self.options = options
        self.whisper = WhisperModel(
            model_path,
            device=device,
            device_index=device_index,
            compute_type=options.compute_type,
            cpu_threads=options.cpu_threads,
            local_files_only=True,
        )
        self.model = self.whisper.model
        if not self.model.is_multilingual:
            raise ValueError(f"{model_path} is an English-only Whisper model; Milo Voice needs a multilingual one")
        unknown = set(options.languages) - set(self.whisper.supported_languages)
        if unknown:
            raise ValueError(f"Whisper does not know the languages {sorted(unknown)}")
        self.languages = options.languages
        self.tokenizer = Tokenizer(
            self.whisper.hf_tokenizer, multilingual=True, task="transcribe", language=self.languages[0]
        )
        self.prompts = Prompts(self.tokenizer, self.languages, options.timestamps)
        torch_device = f"cuda:{device_index}" if device == "cuda" else "cpu"
        on_gpu = device == "cuda"
        use_torch_features = options.features == "torch" or (options.features == "auto" and on_gpu)
        n_mels = self.whisper.feature_extractor.mel_filters.shape[0]
        self.features = Features(
            self.whisper.feature_extractor, LogMelExtractor(n_mels, torch_device) if use_torch_features else None
        )
        self.backend = self._backend(model_path, torch_device, on_gpu)

    def decoding_limits(self) -> DecodingLimits:
        """How far each window's decoding may go and which tokens it never picks: Whisper's own
        rules up to ``max_new_tokens``. A subclass may change them (a load test's fixed lengths)."""
        return DecodingLimits(self.options.max_new_tokens)

    def _backend(self, model_path: str, torch_device: str, on_gpu: bool) -> Backend:
        options = self.options
        limits = self.decoding_limits()
        dtype = _ACTIVATION_DTYPES[self.model.compute_type]
        use_torch_encoder = options.encoder == "torch" or (options.encoder == "auto" and on_gpu)
        encoder = WhisperEncoder.from_model_dir(model_path, torch_device, dtype) if use_torch_encoder else None
        greedy = options.beam_size == 1
        use_torch_decoder = options.decoder == "torch" or (
            options.decoder == "auto" and on_gpu and encoder is not None and greedy
        )
        if not use_torch_decoder:
            return CTranslate2Backend(self.model, self.prompts, limits, options.beam_size, encoder)
        if encoder is None or not greedy:
            raise ValueError("the torch decoder needs the torch encoder and beam_size 1 (it decodes greedily)")
        if options.min_encoded_seconds < WINDOW_SECONDS:
            # Its step buffers and CUDA graphs are made for one number of frames: any other is a recapture.
            raise ValueError("the torch decoder decodes 30 s windows only: leave min_encoded_seconds at 30")
        # The longest prompt (4 tokens) and the most tokens one window decodes.
        decoder = WhisperDecoder.from_model_dir(
            model_path, self._special_tokens(), torch_device, dtype, max_length=4 + limits.new_tokens
        )
        if decoder.cuda_graphs:
            decoder.warm_up(options.decoder_batch, [self.prompts(self.languages[0])], limits.suppress)
        return TorchBackend(encoder, decoder, self.prompts, limits, options.decoder_batch)

    def _special_tokens(self) -> SpecialTokens:
        vocabulary = self.whisper.hf_tokenizer
        no_speech = vocabulary.token_to_id("<|nospeech|>")
        return SpecialTokens(
            sot=self.tokenizer.sot,
            eot=self.tokenizer.eot,
            no_timestamps=self.tokenizer.no_timestamps,
            no_speech=no_speech if no_speech is not None else vocabulary.token_to_id("<|nocaptions|>"),
        )

    # -- public API -------------------------------------------------------

    def transcribe(self, audio: np.ndarray, language: str = AUTO) -> Transcription:
        """One clip; raises ``SttInputError`` where it is refused."""
        result = self.transcribe_batch([SttRequest(audio, language)])[0]
        if isinstance(result, InputError):
            raise result
        return result

    def transcribe_batch(self, requests: list[SttRequest]) -> list[Transcription | InputError]:
        """Every clip's windows decoded in one batch; a refused request gets its error in place."""
        return compute_valid(requests, self.validate, self._transcribe_valid)

    def validate(self, request: SttRequest) -> None:
        if request.language != AUTO and request.language not in self.languages:
            raise SttInputError(f"language {request.language!r} is not one of {[*self.languages, AUTO]}")
        audio = request.audio
        if audio.ndim != 1 or audio.size == 0:
            raise SttInputError("audio is empty; send mono PCM samples at 16 kHz")
        if not np.isfinite(audio).all():
            raise SttInputError("audio holds NaN or infinite samples")

    def _transcribe_valid(self, requests: list[SttRequest]) -> list[Transcription]:
        windows = [w for i, r in enumerate(requests) for w in plan_windows(i, r.audio)]
        features = cut_to(self.features(windows), encoded_frames(windows, self.options.min_encoded_seconds))
        languages, decodings = self.backend.decode(requests, windows, features)
        segments: list[list[Segment]] = [[] for _ in requests]
        tokens = [0] * len(requests)
        for window, decoding in zip(windows, decodings, strict=True):
            segments[window.request].extend(self.prompts.segments(window, decoding))
            tokens[window.request] += len(decoding.tokens)
        return [transcription(request, languages[i], segments[i], tokens[i]) for i, request in enumerate(requests)]


__all__ = ["SAMPLE_RATE", "SpeechToText", "SttInputError", "SttOptions"]
