"""Speech to text with Whisper on CTranslate2 (the faster-whisper model format).

``SpeechToText.transcribe_batch`` takes many requests and decodes them together:
every 30-second window of every request is encoded in one CTranslate2 call and
decoded in one ``generate`` call, which is what makes Triton's dynamic batching pay
off. On a GPU both halves run in torch instead (whisper_encoder.py: flash attention;
whisper_decoder.py: CUDA graphs), with the same weights and the same decoding rules.
Audio longer than one window is cut at pauses found by voice-activity detection
(Silero VAD, shipped with faster-whisper), or in fixed overlapping windows when it
finds no speech, so a long recording never degrades into one truncated window.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import ctranslate2
import numpy as np
import torch
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.vad import VadOptions, get_speech_timestamps

from contract.records import AUTO, InputError, Segment, SttRequest, Transcription
from milo_voice.roles.log_mel import LogMelExtractor
from milo_voice.roles.refusals import compute_valid
from milo_voice.roles.whisper_decoder import WHISPER_TEXT_CONTEXT, SpecialTokens, WhisperDecoder, WhisperDecoding
from milo_voice.roles.whisper_encoder import WhisperEncoder

SAMPLE_RATE = 16000
WINDOW_SECONDS = 30.0
WINDOW_SAMPLES = int(WINDOW_SECONDS * SAMPLE_RATE)
# Fixed windows overlap so that a word cut at one boundary is whole in the next window.
FALLBACK_OVERLAP_SECONDS = 2.0
TIME_PRECISION = 0.02  # seconds per Whisper timestamp token
# The activations' type by the model's compute type (int8 weights compute in float32, float16 or
# bfloat16): what CTranslate2's generate expects as encoder output, and what the torch encoder and
# decoder compute in.
_ACTIVATION_DTYPES = {
    "float32": torch.float32, "int8": torch.float32, "int8_float32": torch.float32, "int16": torch.float32,
    "float16": torch.float16, "int8_float16": torch.float16,
    "bfloat16": torch.bfloat16, "int8_bfloat16": torch.bfloat16,
}  # fmt: skip


class SttInputError(InputError):
    """A request that cannot be transcribed (empty or invalid audio, unknown language)."""


@dataclass
class _Window:
    request: int
    offset: float  # seconds from the start of the request's audio
    audio: np.ndarray


class SpeechToText:
    """Whisper transcription restricted to a set of languages (default Malagasy and French)."""

    def __init__(
        self,
        model_path: str,
        device: str = "cpu",
        device_index: int = 0,
        compute_type: str = "default",
        languages: tuple[str, ...] = ("mg", "fr"),
        beam_size: int = 1,
        cpu_threads: int = 0,
        max_new_tokens: int = 224,
        fixed_new_tokens: int | None = None,
        timestamps: bool = True,
        torch_features: bool | None = None,
        torch_encoder: bool | None = None,
        torch_decoder: bool | None = None,
        decoder_batch: int = 32,
    ) -> None:
        self._whisper = WhisperModel(
            model_path,
            device=device,
            device_index=device_index,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            local_files_only=True,
        )
        self.model: ctranslate2.models.Whisper = self._whisper.model
        if not self.model.is_multilingual:
            raise ValueError(f"{model_path} is an English-only Whisper model; Milo Voice needs a multilingual one")
        unknown = set(languages) - set(self._whisper.supported_languages)
        if unknown:
            raise ValueError(f"Whisper does not know the languages {sorted(unknown)}")
        self.languages = tuple(languages)
        self.beam_size = beam_size
        self.max_new_tokens = max_new_tokens
        # Benchmarks only: decode exactly this many tokens per window (end of text suppressed),
        # so that models with seeded weights do the work that real speech would make them do.
        self.fixed_new_tokens = fixed_new_tokens
        # Timestamps give segments their times, at a price: CTranslate2 applies Whisper's
        # timestamp rules on every decoding step, which doubled the GPU time of a batch of 32.
        self.timestamps = timestamps
        # Features of a whole batch in one torch call on the model's device (log_mel.py), by
        # default where that device is a GPU; on a CPU faster-whisper's NumPy extractor is as fast.
        if torch_features is None:
            torch_features = device == "cuda"
        self._log_mel = (
            LogMelExtractor(self._whisper.feature_extractor.mel_filters.shape[0], _torch_device(device, device_index))
            if torch_features
            else None
        )
        # The encoder in torch (whisper_encoder.py) where the device is a GPU: CTranslate2's
        # PyPI build has no flash attention, and the encoder is most of a window's time there.
        if torch_encoder is None:
            torch_encoder = device == "cuda"
        self._encoder = (
            WhisperEncoder.from_model_dir(
                model_path, _torch_device(device, device_index), _ACTIVATION_DTYPES[self.model.compute_type]
            )
            if torch_encoder
            else None
        )
        self._tokenizer = Tokenizer(
            self._whisper.hf_tokenizer, multilingual=True, task="transcribe", language=self.languages[0]
        )
        # Greedy decoding in torch where the encoder is: CTranslate2 launches hundreds of kernels per
        # token, which at batch 1 made large-v3 decode at about 8 ms a token on an H100.
        if torch_decoder is None:
            torch_decoder = self._encoder is not None and device == "cuda" and beam_size == 1
        if torch_decoder and (self._encoder is None or beam_size != 1):
            raise ValueError("the torch decoder needs the torch encoder and beam_size 1 (it decodes greedily)")
        self.decoder_batch = decoder_batch
        self._decoder = (
            WhisperDecoder.from_model_dir(
                model_path,
                self._special_tokens(),
                _torch_device(device, device_index),
                _ACTIVATION_DTYPES[self.model.compute_type],
                # The longest prompt (4 tokens) and the most tokens one window decodes.
                max_length=4 + (fixed_new_tokens or max_new_tokens),
            )
            if torch_decoder
            else None
        )
        if self._decoder is not None and self._decoder.cuda_graphs:
            self._decoder.warm_up(decoder_batch)
        # The torch decoder's step buffers serve one batch at a time; CTranslate2 queues on its own.
        self._decoding = threading.Lock()
        self._language_token_ids = {
            lang: self._whisper.hf_tokenizer.token_to_id(f"<|{lang}|>") for lang in self.languages
        }

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

    def _transcribe_valid(self, requests: list[SttRequest]) -> list[Transcription]:
        windows = [w for i, r in enumerate(requests) for w in self._windows(i, r.audio)]
        features = self._batch_features(windows)
        if self._decoder is None:
            languages, decodings = self._decode_with_ctranslate2(requests, windows, features)
        else:
            languages, decodings = self._decode_with_torch(requests, windows, features)

        segments: list[list[Segment]] = [[] for _ in requests]
        tokens = [0] * len(requests)
        for window, decoding in zip(windows, decodings, strict=True):
            segments[window.request].extend(self._segments(window, decoding))
            tokens[window.request] += len(decoding.tokens)
        return [
            self._transcription(request, languages[i], segments[i], tokens[i]) for i, request in enumerate(requests)
        ]

    def validate(self, request: SttRequest) -> None:
        if request.language != AUTO and request.language not in self.languages:
            raise SttInputError(f"language {request.language!r} is not one of {[*self.languages, AUTO]}")
        audio = request.audio
        if audio.ndim != 1 or audio.size == 0:
            raise SttInputError("audio is empty; send mono PCM samples at 16 kHz")
        if not np.isfinite(audio).all():
            raise SttInputError("audio holds NaN or infinite samples")

    # -- steps --------------------------------------------------------------

    def _decode_with_ctranslate2(
        self, requests: list[SttRequest], windows: list[_Window], features: np.ndarray | torch.Tensor
    ) -> tuple[list[tuple[str, float]], list[WhisperDecoding]]:
        # ``_owner`` holds the memory the ``encoded`` view reads: it must live until generate is done.
        encoded, _owner = self._encode(features)
        languages = self._choose_languages(requests, windows, encoded)
        prompts = [self._prompt(languages[w.request][0]) for w in windows]
        new_tokens, suppress = self._decoding_limits()
        results = self.model.generate(
            encoded,
            prompts,
            beam_size=self.beam_size,
            # CTranslate2 decodes at most half of ``max_length`` new tokens (whisper.cc; Whisper's own
            # sample_len is n_text_ctx // 2), so asking for N new tokens means max_length 2N.
            max_length=min(2 * new_tokens, WHISPER_TEXT_CONTEXT),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=suppress,
        )
        # ``scores`` is the log-probability normalised by length; recover the sum over tokens.
        return languages, [
            WhisperDecoding(r.sequences_ids[0], r.scores[0] * max(len(r.sequences_ids[0]), 1), r.no_speech_prob)
            for r in results
        ]

    def _decode_with_torch(
        self, requests: list[SttRequest], windows: list[_Window], features: np.ndarray | torch.Tensor
    ) -> tuple[list[tuple[str, float]], list[WhisperDecoding]]:
        assert self._encoder is not None and self._decoder is not None
        with self._decoding:
            return self._decode_chunks(requests, windows, self._encoder(torch.as_tensor(features)))

    def _decode_chunks(
        self, requests: list[SttRequest], windows: list[_Window], states: torch.Tensor
    ) -> tuple[list[tuple[str, float]], list[WhisperDecoding]]:
        """Decode ``decoder_batch`` windows at a time; a request's language comes from its first window."""
        assert self._decoder is not None
        chosen: dict[int, tuple[str, float]] = {
            i: (r.language, 1.0) for i, r in enumerate(requests) if r.language != AUTO
        }
        language_ids = [self._language_token_ids[lang] for lang in self.languages]
        new_tokens, suppress = self._decoding_limits()
        decodings: list[WhisperDecoding] = []
        for begin in range(0, len(windows), self.decoder_batch):
            chunk = windows[begin : begin + self.decoder_batch]
            # The <|startoftranscript|> step both starts decoding and detects the language.
            session = self._decoder.start(states[begin : begin + len(chunk)])
            first_rows = {}  # windows come in request order: a request's first window is met first
            for row, window in enumerate(chunk):
                if window.request not in chosen:
                    first_rows.setdefault(window.request, row)
            if first_rows:
                rows = list(first_rows.values())
                probabilities = self._decoder.language_probabilities(session.sot_logits[rows], language_ids)
                for request, row_probabilities in zip(first_rows, probabilities, strict=True):
                    chosen[request] = _pick_language(dict(zip(self.languages, row_probabilities.tolist(), strict=True)))
            prompts = [self._prompt(chosen[w.request][0]) for w in chunk]
            decodings += session.generate(prompts, new_tokens, suppress, suppress_blank=True)
        return [chosen[i] for i in range(len(requests))], decodings

    def _decoding_limits(self) -> tuple[int, list[int]]:
        """New tokens per window at most, and the tokens never decoded (-1: the model's list)."""
        if self.fixed_new_tokens:
            return self.fixed_new_tokens, [-1, self._tokenizer.eot]
        return self.max_new_tokens, [-1]

    def _special_tokens(self) -> SpecialTokens:
        vocabulary = self._whisper.hf_tokenizer
        no_speech = vocabulary.token_to_id("<|nospeech|>")
        return SpecialTokens(
            sot=self._tokenizer.sot,
            eot=self._tokenizer.eot,
            no_timestamps=self._tokenizer.no_timestamps,
            no_speech=no_speech if no_speech is not None else vocabulary.token_to_id("<|nocaptions|>"),
        )

    def _windows(self, index: int, audio: np.ndarray) -> list[_Window]:
        audio = audio.astype(np.float32, copy=False)
        if audio.size <= WINDOW_SAMPLES:
            return [_Window(index, 0.0, audio)]
        speech = get_speech_timestamps(audio, VadOptions(max_speech_duration_s=WINDOW_SECONDS - 1))
        windows = _pack_speech(index, audio, speech)
        return windows or _fixed_windows(index, audio)

    def _encode(self, features: np.ndarray | torch.Tensor) -> tuple[ctranslate2.StorageView, np.ndarray | torch.Tensor]:
        """Encoder states for ``generate``, and the array whose memory they borrow."""
        if self._encoder is None:
            return self.model.encode(ctranslate2.StorageView.from_array(_ct2_array(features)), to_cpu=False), features
        states = self._encoder(torch.as_tensor(features))
        return ctranslate2.StorageView.from_array(_ct2_array(states)), states

    def _batch_features(self, windows: list[_Window]) -> np.ndarray | torch.Tensor:
        if self._log_mel is None:
            return np.stack([self._features(w.audio) for w in windows])
        padded = np.zeros((len(windows), WINDOW_SAMPLES), dtype=np.float32)
        for row, window in zip(padded, windows, strict=True):
            row[: window.audio.size] = window.audio[:WINDOW_SAMPLES]
        return self._log_mel(padded)

    def _features(self, audio: np.ndarray) -> np.ndarray:
        padded = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
        padded[: audio.size] = audio[:WINDOW_SAMPLES]
        # The feature extractor pads 160 samples on its own and yields one frame too many.
        return self._whisper.feature_extractor(padded)[:, : self._whisper.feature_extractor.nb_max_frames]

    def _choose_languages(
        self, requests: list[SttRequest], windows: list[_Window], encoded: ctranslate2.StorageView
    ) -> list[tuple[str, float]]:
        """(language, probability) per request; detection is limited to ``self.languages``."""
        chosen: list[tuple[str, float]] = [(r.language, 1.0) for r in requests]
        auto = [i for i, r in enumerate(requests) if r.language == AUTO]
        if not auto:
            return chosen
        first_window = {}
        for position, window in enumerate(windows):
            first_window.setdefault(window.request, position)
        # detect_language runs on the whole batch; its cost is one decoder step.
        detected = self.model.detect_language(encoded)
        for i in auto:
            probabilities = dict(detected[first_window[i]])
            chosen[i] = _pick_language({lang: probabilities.get(f"<|{lang}|>", 0.0) for lang in self.languages})
        return chosen

    def _prompt(self, language: str) -> list[int]:
        prompt = [self._tokenizer.sot, self._language_token_ids[language], self._tokenizer.transcribe]
        return prompt if self.timestamps else [*prompt, self._tokenizer.no_timestamps]

    def _segments(self, window: _Window, decoding: WhisperDecoding) -> list[Segment]:
        tokens = decoding.tokens
        avg_logprob = decoding.logprob_sum / (len(tokens) + 1)
        duration = window.audio.size / SAMPLE_RATE
        pieces = _split_on_timestamps(tokens, self._tokenizer.timestamp_begin, duration)
        segments = []
        for start, end, text_tokens in pieces:
            text = self._tokenizer.decode(text_tokens).strip()
            if text:
                segments.append(
                    Segment(
                        start=round(window.offset + start, 2),
                        end=round(window.offset + min(end, duration), 2),
                        text=text,
                        avg_logprob=avg_logprob,
                        no_speech_prob=decoding.no_speech_prob,
                    )
                )
        return segments

    def _transcription(
        self, request: SttRequest, language: tuple[str, float], segments: list[Segment], tokens: int
    ) -> Transcription:
        duration = request.audio.size / SAMPLE_RATE
        if segments:
            weights = [max(s.end - s.start, 0.01) for s in segments]
            mean_logprob = sum(w * s.avg_logprob for w, s in zip(weights, segments, strict=True)) / sum(weights)
            confidence = math.exp(min(mean_logprob, 0.0))
        else:
            confidence = 0.0
        return Transcription(
            text=" ".join(s.text for s in segments).strip(),
            language=language[0],
            language_probability=round(language[1], 4),
            confidence=round(confidence, 4),
            duration=round(duration, 3),
            segments=segments,
            tokens=tokens,
        )


def _pick_language(probabilities: dict[str, float]) -> tuple[str, float]:
    """The likeliest allowed language, and its probability renormalised over the allowed ones
    ("how sure, between mg and fr")."""
    total = sum(probabilities.values())
    language = max(probabilities, key=probabilities.__getitem__)
    return language, (probabilities[language] / total if total > 0 else 1.0 / len(probabilities))


def _split_on_timestamps(
    tokens: list[int], timestamp_begin: int, duration: float
) -> list[tuple[float, float, list[int]]]:
    """Cut generated tokens into (start, end, text tokens) at Whisper's timestamp tokens."""
    pieces: list[tuple[float, float, list[int]]] = []
    start: float | None = None
    text: list[int] = []
    for token in tokens:
        if token >= timestamp_begin:
            time = (token - timestamp_begin) * TIME_PRECISION
            if start is None:
                start = time
            elif text:
                pieces.append((start, time, text))
                start, text = None, []
            else:
                start = time
        else:
            text.append(token)
    if text:
        pieces.append((start or 0.0, duration, text))
    return pieces


def _pack_speech(index: int, audio: np.ndarray, speech: list[dict[str, int]]) -> list[_Window]:
    """Group VAD speech spans into windows of at most 30 s, cutting only in pauses."""
    windows: list[_Window] = []
    start = end = None
    for span in speech:
        if start is None:
            start, end = span["start"], span["end"]
        elif span["end"] - start <= WINDOW_SAMPLES:
            end = span["end"]
        else:
            windows.append(_Window(index, start / SAMPLE_RATE, audio[start:end]))
            start, end = span["start"], span["end"]
    if start is not None:
        windows.append(_Window(index, start / SAMPLE_RATE, audio[start:end]))
    return windows


def _fixed_windows(index: int, audio: np.ndarray) -> list[_Window]:
    step = WINDOW_SAMPLES - int(FALLBACK_OVERLAP_SECONDS * SAMPLE_RATE)
    return [
        _Window(index, begin / SAMPLE_RATE, audio[begin : begin + WINDOW_SAMPLES])
        for begin in range(0, max(audio.size - int(FALLBACK_OVERLAP_SECONDS * SAMPLE_RATE), 1), step)
    ]


def _ct2_array(array: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
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


def _torch_device(device: str, index: int) -> str:
    return f"cuda:{index}" if device == "cuda" else "cpu"
