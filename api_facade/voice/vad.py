"""Voice activity on a live audio stream, and the turn taking built on it.

The model is Silero VAD v6 (MIT licence), the ONNX file that faster-whisper 1.2.1 ships, copied
into ``api_facade/data`` so that the facade needs neither faster-whisper nor torch. It reads
32 ms frames (512 samples at 16 kHz) with the 64 samples before each, and carries its LSTM
state from frame to frame: ``VadStream`` keeps that state for one conversation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.records import STT_SAMPLE_RATE

MODEL_PATH = Path(__file__).resolve().parent.parent / "data" / "silero_vad_v6.onnx"
FRAME = 512  # samples per frame at 16 kHz
CONTEXT = 64  # samples of the previous frame that the model reads before each frame
FRAME_MS = FRAME * 1000 // STT_SAMPLE_RATE
# ``has_speech`` reads a file in chunks that double from the first to the longest: most files
# begin with speech, found in the first chunk, and the longest bounds the memory of a long one.
FIRST_CHUNK_S, LONGEST_CHUNK_S = 0.5, 30.0


class VadModel:
    """The ONNX session, shared by every conversation of the process (its runs are thread-safe)."""

    def __init__(self, path: Path = MODEL_PATH) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.log_severity_level = 4
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"], sess_options=options)

    def stream(self) -> VadStream:
        return VadStream(self)

    def has_speech(
        self, audio: np.ndarray, detection: TurnDetection | None = None, first_chunk_s: float = FIRST_CHUNK_S
    ) -> bool:
        """Whether ``audio`` (16 kHz) holds speech by the rules of a turn: a speech recogniser
        given none may still write something, which must never be answered. The reading stops
        where speech starts (the answer is the same however the audio is cut)."""
        detector = TurnDetector(detection or TurnDetection())
        stream = self.stream()
        longest = int(LONGEST_CHUNK_S * STT_SAMPLE_RATE)
        start, chunk = 0, min(max(FRAME, int(first_chunk_s * STT_SAMPLE_RATE)), longest)
        while start < len(audio):
            if any(isinstance(event, SpeechStarted) for event in detector.feed(stream(audio[start : start + chunk]))):
                return True
            start += chunk
            chunk = min(2 * chunk, longest)
        return False


class VadStream:
    """Speech probabilities of one audio stream, frame by frame, however its chunks are cut."""

    def __init__(self, model: VadModel) -> None:
        self.model = model
        self._state = (np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32))
        self._context = np.zeros(CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """The probability of speech in each whole frame that ``audio`` completes (samples left
        over wait for the next call)."""
        self._pending = np.concatenate([self._pending, audio.astype(np.float32, copy=False)])
        count = len(self._pending) // FRAME
        if count == 0:
            return np.zeros(0, np.float32)
        frames = self._pending[: count * FRAME].reshape(count, FRAME)
        self._pending = self._pending[count * FRAME :]
        contexts = np.concatenate([self._context[None], frames[:-1, -CONTEXT:]])
        h, c = self._state
        probabilities, h, c = self.model.session.run(
            None, {"input": np.concatenate([contexts, frames], axis=1), "h": h, "c": c}
        )
        self._state = (h, c)
        self._context = frames[-1, -CONTEXT:].copy()
        return np.asarray(probabilities, np.float32).reshape(-1)


@dataclass(frozen=True)
class TurnDetection:
    """Server-side turn detection, as OpenAI's Realtime API names its settings."""

    threshold: float = 0.5  # a frame at or above it is speech
    silence_duration_ms: int = 500  # this much silence after speech ends the turn
    prefix_padding_ms: int = 300  # audio kept from before the speech started
    min_speech_ms: int = 96  # shorter bursts (a click, a cough) do not start a turn


@dataclass(frozen=True)
class SpeechStarted:
    at_ms: int  # stream time of the first speech frame


@dataclass(frozen=True)
class SpeechStopped:
    at_ms: int  # stream time the speech ended (before the silence that confirmed it)


class TurnDetector:
    """Speech started / stopped events from frame probabilities, with hysteresis: a frame below
    ``threshold - 0.15`` counts as silence, between the two it continues what was going on."""

    def __init__(self, settings: TurnDetection) -> None:
        self.settings = settings
        self.frames = 0  # frames seen since the stream began
        self.speaking = False
        self._run = 0  # consecutive frames that argue for a change of state
        self._run_start = 0

    def feed(self, probabilities: np.ndarray) -> list[SpeechStarted | SpeechStopped]:
        settings = self.settings
        events: list[SpeechStarted | SpeechStopped] = []
        start_frames = max(1, -(-settings.min_speech_ms // FRAME_MS))
        stop_frames = max(1, -(-settings.silence_duration_ms // FRAME_MS))
        for probability in probabilities.tolist():
            frame = self.frames
            self.frames += 1
            if not self.speaking:
                if probability >= settings.threshold:
                    self._run_start = frame if self._run == 0 else self._run_start
                    self._run += 1
                    if self._run >= start_frames:
                        self.speaking, self._run = True, 0
                        events.append(SpeechStarted(self._run_start * FRAME_MS))
                else:
                    self._run = 0
            elif probability < settings.threshold - 0.15:
                self._run_start = frame if self._run == 0 else self._run_start
                self._run += 1
                if self._run >= stop_frames:
                    self.speaking, self._run = False, 0
                    events.append(SpeechStopped(self._run_start * FRAME_MS))
            else:
                self._run = 0
        return events
