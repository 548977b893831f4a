"""Text to speech on the embedded seeded VITS voices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contract.records import Speech, TtsRequest
from milo_voice.roles.tts import TextToSpeech, TtsInputError, split_sentences
from tests.conftest import embedded_voices


@pytest.fixture(scope="module")
def tts(embedded_dir: Path) -> TextToSpeech:
    return TextToSpeech(embedded_voices(embedded_dir))


def test_duration_is_plausible_for_the_text(tts: TextToSpeech) -> None:
    speech = tts.synthesize("Manao ahoana daholo ianareo, tonga soa eto Madagasikara.", "mg")
    # About 10-15 characters a second of natural speech.
    assert 2.5 < speech.duration < 8.0
    assert speech.sample_rate == 16000
    assert speech.audio.dtype == np.float32
    assert np.abs(speech.audio).max() <= 1.0
    assert np.abs(speech.audio).max() > 0.01


def test_numbers_are_spoken(tts: TextToSpeech) -> None:
    speech = tts.synthesize("Tamin'ny 2024", "mg")
    assert speech.spoken_text == "Tamin'ny efatra amby roapolo sy roa arivo"
    assert speech.duration > tts.synthesize("Tamin'ny", "mg").duration * 3


def test_longer_text_gives_longer_audio_and_speed_shortens(tts: TextToSpeech) -> None:
    short = tts.synthesize("Bonjour.", "fr")
    long = tts.synthesize("Bonjour, je voudrais acheter du riz au marché demain matin.", "fr")
    fast = tts.synthesize("Bonjour, je voudrais acheter du riz au marché demain matin.", "fr", speed=2.0)
    # Pico pads each clip with a little silence, so a text six times longer is not six times longer.
    assert long.duration > 2 * short.duration
    assert fast.duration < 0.7 * long.duration


def test_batch_with_padding_matches_single_calls(tts: TextToSpeech) -> None:
    texts = ["Salama.", "Misaotra betsaka tompoko, veloma ary mandra-pihaona.", "Bonjour à tous."]
    langs = ["mg", "mg", "fr"]
    batch = tts.synthesize_batch([TtsRequest(t, lang) for t, lang in zip(texts, langs, strict=True)])
    single = [tts.synthesize(t, lang) for t, lang in zip(texts, langs, strict=True)]
    assert [b.audio.size for b in batch] == [s.audio.size for s in single]
    assert len({b.audio.size for b in batch}) == 3


def test_synthesis_is_reproducible(tts: TextToSpeech) -> None:
    first = tts.synthesize("Salama tsara.", "mg").audio
    second = tts.synthesize("Salama tsara.", "mg").audio
    np.testing.assert_array_equal(first, second)


def test_stream_yields_one_clip_per_sentence(tts: TextToSpeech) -> None:
    text = "Salama. Manao ahoana ianao? Tsara be!"
    clips = list(tts.stream(TtsRequest(text, "mg")))
    assert [c.spoken_text for c in clips] == split_sentences(text)
    assert all(c.duration > 0.2 for c in clips)


@pytest.mark.parametrize(
    ("text", "language", "speed", "message"),
    [("", "mg", 1.0, "empty"), ("   ", "fr", 1.0, "empty"), ("?!", "fr", 1.0, "no words"),
     ("Salama", "en", 1.0, "language"), ("Salama", "mg", 9.0, "speed"), ("a" * 2001, "mg", 1.0, "longer")],
)  # fmt: skip
def test_bad_input_is_refused(tts: TextToSpeech, text: str, language: str, speed: float, message: str) -> None:
    with pytest.raises(TtsInputError, match=message):
        tts.synthesize(text, language, speed)


def test_a_refused_request_is_answered_in_place_in_its_batch(tts: TextToSpeech) -> None:
    first, refused, last = tts.synthesize_batch(
        [TtsRequest("Salama.", "mg"), TtsRequest("?!", "mg"), TtsRequest("Bonjour.", "fr")]
    )
    assert isinstance(refused, TtsInputError) and "no words" in str(refused)
    assert isinstance(first, Speech) and isinstance(last, Speech) and first.spoken_text == "Salama."


def test_accented_french_is_spoken_where_the_locale_is_ascii(tts: TextToSpeech, embedded_dir: Path) -> None:
    """The stock Triton's Python backend runs the role under an ASCII locale (no UTF-8 coercion):
    there too, a French text with accents is spoken, its audio as long as under a UTF-8 locale."""
    import os
    import subprocess
    import sys

    text = "Bonjour à tous, où êtes-vous ?"
    script = (
        "import locale, sys\n"
        "from pathlib import Path\n"
        "from milo_voice.roles.tts import TextToSpeech\n"
        "from tests.conftest import embedded_voices\n"
        "assert locale.getpreferredencoding() != 'UTF-8' and sys.getfilesystemencoding() == 'ascii'\n"
        f"tts = TextToSpeech(embedded_voices(Path({str(embedded_dir)!r})))\n"
        f"print(tts.synthesize({text!a}, 'fr').audio.size)\n"  # the script itself in ASCII
    )
    ascii_locale = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, encoding="utf-8", env=ascii_locale, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    here = tts.synthesize(text, "fr")
    assert int(done.stdout.split()[-1]) == here.audio.size > 16000
