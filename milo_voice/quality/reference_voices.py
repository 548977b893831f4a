"""Voices of this machine that say a text for the evaluation and the load tests: speech that the
served voices did not make, so that what Whisper hears of it measures Whisper alone.

``voice``: an espeak-ng voice (``fr``, ``fr+m3``; ``mb-fr1`` to ``mb-fr7`` are MBROLA's, which
espeak-ng drives where the ``mbrola-fr*`` packages are installed), or ``pico`` (SVOX Pico's
French, ``pico2wave``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000


def spoken(text: str, voice: str = "fr", words_per_minute: int | None = None) -> np.ndarray:
    """``text`` said by ``voice``, as 16 kHz mono float32. ``words_per_minute``: espeak-ng's speed."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
        if voice == "pico":
            command = ["pico2wave", "-l", "fr-FR", "-w", wav.name, text]
        else:
            speed = ["-s", str(words_per_minute)] if words_per_minute else []
            command = ["espeak-ng", "-v", voice, *speed, "-w", wav.name, text]
        if shutil.which(command[0]) is None:
            raise RuntimeError(f"{command[0]} is missing: run `make setup`")
        subprocess.run(command, check=True, capture_output=True)
        audio, rate = sf.read(wav.name, dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    from scipy.signal import resample_poly  # only here: machines with clips ready-made may lack SciPy

    return np.asarray(resample_poly(audio, SAMPLE_RATE, rate), np.float32)


def available(voice: str) -> bool:
    """Whether this machine can say anything with ``voice`` (an MBROLA voice needs its package)."""
    try:
        return len(spoken("un", voice)) > 0
    except (RuntimeError, subprocess.CalledProcessError):
        return False
