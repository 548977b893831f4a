"""The voices ``TextToSpeech`` speaks with: each says a list of normalised texts at a speed.

- ``VitsVoice``: a VITS model (the MMS-TTS architecture) in transformers, the texts of a batch
  padded together and synthesised in one forward pass, each waveform cut back to its own length.
- ``PicoVoice``: SVOX Pico (Debian non-free ``libttspico-utils``, ``pico2wave``), a real voice
  that installs offline; the texts of a batch are spoken in parallel processes.

The registry names a voice by its folder under the model's weights, or ``pico:<language>`` (for
example ``pico:fr-FR``) for Pico's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile as sf
import torch
from transformers import VitsModel, VitsTokenizer

from contract.records import Speech

PICO_PREFIX = "pico:"
PICO_SAMPLE_RATE = 16000
# Pico's <speed> level: 100 is its own pace; it takes 20 to 500.
PICO_SPEED_LEVELS = (20, 500)
SILENCE_S = 0.1  # what a text that normalises to nothing is said as


class Voice(Protocol):
    sample_rate: int

    def speak(self, texts: list[str], speed: float) -> list[Speech]: ...


def voice_location(weights: Path, name: str) -> str | Path:
    """Where the registry's voice ``name`` is: a folder under ``weights``, or Pico's name as is."""
    return name if name.startswith(PICO_PREFIX) else weights / name


def open_voice(location: str | Path, device: str, seed: int) -> Voice:
    if str(location).startswith(PICO_PREFIX):
        return PicoVoice(str(location).removeprefix(PICO_PREFIX))
    return VitsVoice(Path(location), device, seed)


def _silence(sample_rate: int, text: str) -> Speech:
    return Speech(np.zeros(int(sample_rate * SILENCE_S), np.float32), sample_rate, text)


class VitsVoice:
    def __init__(self, folder: Path, device: str, seed: int = 0) -> None:
        self.device = device
        self.seed = seed
        self.tokenizer = VitsTokenizer.from_pretrained(folder)
        self.model = VitsModel.from_pretrained(folder).to(device).eval()
        self.sample_rate = int(self.model.config.sampling_rate)
        # VITS samples noise: a seeded generator per call keeps output reproducible.
        self._lock = threading.Lock()

    def speak(self, texts: list[str], speed: float) -> list[Speech]:
        inputs = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
        if inputs["input_ids"].shape[1] == 0:
            return [_silence(self.sample_rate, text) for text in texts]
        with self._lock, torch.inference_mode():
            torch.manual_seed(self.seed)
            output = self.model(**inputs, speaking_rate=speed)
        waveforms = output.waveform.float().cpu().numpy()
        lengths = output.sequence_lengths.cpu().numpy()
        return [
            Speech(np.clip(waveform[: int(length)], -1.0, 1.0).astype(np.float32), self.sample_rate, text)
            for text, waveform, length in zip(texts, waveforms, lengths, strict=True)
        ]


class PicoVoice:
    def __init__(self, language: str, workers: int | None = None) -> None:
        if shutil.which("pico2wave") is None:
            raise FileNotFoundError(
                "pico2wave is missing: install Debian's libttspico-utils (non-free), as `make setup` does"
            )
        self.language = language
        self.sample_rate = PICO_SAMPLE_RATE
        self._pool = ThreadPoolExecutor(workers or len(os.sched_getaffinity(0)), thread_name_prefix="pico")
        self._one("ok", 1.0)  # an unknown language fails here, not at the first request

    def speak(self, texts: list[str], speed: float) -> list[Speech]:
        return list(self._pool.map(lambda text: self._one(text, speed), texts))

    def _one(self, text: str, speed: float) -> Speech:
        words = text.replace("<", " ").replace(">", " ").strip()
        if not any(ch.isalnum() for ch in words):
            return _silence(self.sample_rate, text)
        level = min(max(round(100 * speed), PICO_SPEED_LEVELS[0]), PICO_SPEED_LEVELS[1])
        with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
            # The text goes as UTF-8 bytes: a str argument is encoded with the locale's encoding,
            # which is ASCII in the stock Triton's Python backend ("à" failed there).
            spoken = f'<speed level="{level}">{words}</speed>'.encode()
            command = ["pico2wave", "-l", self.language, "-w", wav.name, spoken]
            done = subprocess.run(command, capture_output=True, timeout=60)
            if done.returncode != 0:
                reason = done.stderr.decode("utf-8", "replace").strip()[:200]
                raise RuntimeError(f"pico2wave failed ({done.returncode}): {reason}")
            audio, rate = sf.read(wav.name, dtype="float32")
        if rate != self.sample_rate:
            raise RuntimeError(f"pico2wave wrote {rate} Hz, not {self.sample_rate}")
        return Speech(np.asarray(audio, np.float32), self.sample_rate, text)
