"""What the embedded French voice says is what the embedded recogniser hears: a quality gate on
TTS -> STT, measured as a character error rate (``milo_voice.quality``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from milo_voice.quality.error_rates import ErrorCount, character_errors
from milo_voice.roles.stt import SpeechToText, SttOptions
from milo_voice.roles.tts import TextToSpeech
from tests.conftest import embedded_voices

SENTENCES = (
    "Bonjour, je voudrais un taxi.",
    "Où se trouve l'hôpital le plus proche ?",
    "Quel temps fera-t-il demain dans la capitale ?",
    "La réunion du conseil municipal a été reportée à la semaine prochaine.",
    "Je cherche une pharmacie ouverte le dimanche.",
    "Le train part à 7h30 et coûte 15 000 Ar.",
)
# Measured on these sentences: 0.074 (2026-12-01; over the 30 sentences of
# loadtests/bench/stt_window.py, with the same 10 s window, Pico scored 0.070). The gate leaves
# room for other CPUs' rounding, not for a voice or a recogniser that got worse.
CER_GATE = 0.12


@pytest.fixture(scope="module")
def roles(embedded_dir: Path) -> tuple[TextToSpeech, SpeechToText]:
    stt = SpeechToText(str(embedded_dir / "stt"), options=SttOptions(compute_type="int8", min_encoded_seconds=10))
    return TextToSpeech(embedded_voices(embedded_dir)), stt


def test_french_speech_is_heard_back_as_written(roles: tuple[TextToSpeech, SpeechToText]) -> None:
    from scipy.signal import resample_poly

    tts, stt = roles
    total = ErrorCount()
    for sentence in SENTENCES:
        speech = tts.synthesize(sentence, "fr")
        audio = speech.audio if speech.sample_rate == 16000 else resample_poly(speech.audio, 16000, speech.sample_rate)
        heard = stt.transcribe(audio, "auto")
        assert heard.language == "fr", (sentence, heard.text)
        # Numbers as words on both sides: the recogniser writes "15 000" for "quinze mille".
        total += character_errors(sentence, heard.text, "fr")
    print(f"French TTS -> STT character error rate: {total.rate:.3f} over {total.length} characters")
    assert total.rate < CER_GATE
