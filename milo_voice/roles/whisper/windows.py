"""A clip cut into Whisper's 30-second windows: at pauses found by voice-activity detection
(Silero VAD, shipped with faster-whisper), or in fixed overlapping windows when it finds no
speech, so a long recording never degrades into one truncated window."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps

from contract.records import STT_SAMPLE_RATE

SAMPLE_RATE = STT_SAMPLE_RATE
WINDOW_SECONDS = 30.0
WINDOW_SAMPLES = int(WINDOW_SECONDS * SAMPLE_RATE)
# Fixed windows overlap so that a word cut at one boundary is whole in the next window.
FALLBACK_OVERLAP_SECONDS = 2.0


@dataclass
class Window:
    request: int  # which request of the batch it belongs to
    offset: float  # seconds from the start of the request's audio
    audio: np.ndarray


def plan_windows(request: int, audio: np.ndarray) -> list[Window]:
    audio = audio.astype(np.float32, copy=False)
    if audio.size <= WINDOW_SAMPLES:
        return [Window(request, 0.0, audio)]
    speech = get_speech_timestamps(audio, VadOptions(max_speech_duration_s=WINDOW_SECONDS - 1))
    return _pack_speech(request, audio, speech) or _fixed_windows(request, audio)


def _pack_speech(request: int, audio: np.ndarray, speech: list[dict[str, int]]) -> list[Window]:
    """Group VAD speech spans into windows of at most 30 s, cutting only in pauses."""
    windows: list[Window] = []
    start = end = None
    for span in speech:
        if start is None:
            start, end = span["start"], span["end"]
        elif span["end"] - start <= WINDOW_SAMPLES:
            end = span["end"]
        else:
            windows.append(Window(request, start / SAMPLE_RATE, audio[start:end]))
            start, end = span["start"], span["end"]
    if start is not None:
        windows.append(Window(request, start / SAMPLE_RATE, audio[start:end]))
    return windows


def _fixed_windows(request: int, audio: np.ndarray) -> list[Window]:
    step = WINDOW_SAMPLES - int(FALLBACK_OVERLAP_SECONDS * SAMPLE_RATE)
    return [
        Window(request, begin / SAMPLE_RATE, audio[begin : begin + WINDOW_SAMPLES])
        for begin in range(0, max(audio.size - int(FALLBACK_OVERLAP_SECONDS * SAMPLE_RATE), 1), step)
    ]
