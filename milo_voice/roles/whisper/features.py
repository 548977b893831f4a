"""Whisper's log-mel features of a batch of 30 s windows: faster-whisper's NumPy extractor, window by
window, or (``LogMelExtractor``) the whole batch in one torch call on the model's device.

faster-whisper's extractor is NumPy, one window at a time on one CPU thread: about 30 ms a
window at 128 mels, which bounded the served STT on an H100 at about 11 clips/s
(``docs/benchmarks.md``, section 4). This computes the same features (same filters, window,
padding, clipping and scaling) for every window of a batch at once, on the GPU where the model
is, and hands them to CTranslate2 without a trip through host memory.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from faster_whisper.feature_extractor import FeatureExtractor

from milo_voice.roles.whisper.windows import SAMPLE_RATE, WINDOW_SAMPLES, WINDOW_SECONDS, Window

N_FFT = 400
HOP = 160
FRAMES = 3000  # 30 s at a 10 ms hop
FRAMES_PER_SECOND = 100


class LogMelExtractor:
    def __init__(self, n_mels: int, device: str = "cpu") -> None:
        self.device = torch.device(device)
        filters = FeatureExtractor.get_mel_filters(SAMPLE_RATE, N_FFT, n_mels).astype(np.float32)
        self.filters = torch.from_numpy(filters).to(self.device)
        # np.hanning(N + 1)[:-1], faster-whisper's window, is torch's periodic Hann window.
        self.window = torch.hann_window(N_FFT, periodic=True, device=self.device)

    @torch.inference_mode()
    def __call__(self, windows: np.ndarray) -> torch.Tensor:
        """``[batch, 480000]`` float32 samples to ``[batch, n_mels, 3000]`` features, on ``device``."""
        audio = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(self.device, non_blocking=True)
        # faster-whisper pads 160 samples before its (centred, reflect-padded) STFT.
        audio = torch.nn.functional.pad(audio, (0, HOP))
        spectrum = torch.stft(
            audio, N_FFT, HOP, window=self.window, center=True, pad_mode="reflect", return_complex=True
        )
        power = spectrum[..., :-1].abs() ** 2
        log_spec = torch.clamp(self.filters @ power, min=1e-10).log10()
        # Per window: nothing below 8 (a factor of 1e8) under its loudest bin, then scaled.
        floor = log_spec.amax(dim=(1, 2), keepdim=True) - 8.0
        return ((torch.maximum(log_spec, floor) + 4.0) / 4.0)[:, :, :FRAMES].contiguous()


class Features:
    """The features of a batch of windows, in the way chosen when the role was built."""

    def __init__(self, extractor: FeatureExtractor, log_mel: LogMelExtractor | None) -> None:
        self.extractor = extractor
        self.log_mel = log_mel

    def __call__(self, windows: list[Window]) -> np.ndarray | torch.Tensor:
        if self.log_mel is None:
            return np.stack([self.one(w.audio) for w in windows])
        padded = np.zeros((len(windows), WINDOW_SAMPLES), dtype=np.float32)
        for row, window in zip(padded, windows, strict=True):
            row[: window.audio.size] = window.audio[:WINDOW_SAMPLES]
        return self.log_mel(padded)

    def one(self, audio: np.ndarray) -> np.ndarray:
        """One window's features with faster-whisper's extractor."""
        padded = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
        padded[: audio.size] = audio[:WINDOW_SAMPLES]
        # The feature extractor pads 160 samples on its own and yields one frame too many.
        return self.extractor(padded)[:, : self.extractor.nb_max_frames]


def encoded_frames(windows: list[Window], min_seconds: float) -> int:
    """How many frames of a batch's features the encoder reads: all 3000 (Whisper's 30 s, as it was
    trained) when ``min_seconds`` is 30, else the longest window's whole seconds plus one second of
    the silence after it, and at least ``min_seconds``. Whisper's encoder takes any length up to 30 s
    (its position encodings are cut to the input), and its time grows faster than the length."""
    if min_seconds >= WINDOW_SECONDS:
        return FRAMES
    longest = max(w.audio.size for w in windows) / SAMPLE_RATE
    seconds = max(math.ceil(min_seconds), math.ceil(longest) + 1)
    return min(FRAMES, seconds * FRAMES_PER_SECOND)


def cut_to(features: np.ndarray | torch.Tensor, frames: int) -> np.ndarray | torch.Tensor:
    """The first ``frames`` frames of every window's features, contiguous as the encoders read them."""
    if features.shape[-1] == frames:
        return features
    if isinstance(features, np.ndarray):
        return np.ascontiguousarray(features[:, :, :frames])
    return features[:, :, :frames].contiguous()
