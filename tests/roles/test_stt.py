"""Speech to text on the embedded Whisper base weights, with espeak-ng speech."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.records import SttRequest, Transcription
from milo_voice.roles.stt import SpeechToText, SttInputError, SttOptions
from milo_voice.roles.whisper.backends import CTranslate2Backend
from tests.conftest import speak


@pytest.fixture(scope="module")
def stt(embedded_dir: Path) -> SpeechToText:
    return SpeechToText(str(embedded_dir / "stt"), options=SttOptions(compute_type="int8"))


@pytest.fixture(scope="module")
def french() -> np.ndarray:
    return speak("Bonjour, je voudrais acheter du riz au marché.")


def test_french_speech_is_recognised(stt: SpeechToText, french: np.ndarray) -> None:
    result = stt.transcribe(french, "auto")
    assert result.language == "fr"
    assert "bonjour" in result.text.lower()
    assert 0.5 < result.language_probability <= 1.0
    assert result.duration == pytest.approx(french.size / 16000, abs=0.01)
    assert result.segments and result.segments[0].start >= 0.0
    assert result.segments[-1].end <= result.duration + 0.05


def test_confidence_comes_from_token_probabilities(stt: SpeechToText, french: np.ndarray) -> None:
    noise = np.random.default_rng(7).normal(0, 0.2, 16000 * 3).astype(np.float32)
    speech = stt.transcribe(french, "fr").confidence
    babble = stt.transcribe(noise, "fr").confidence
    assert 0.0 < speech <= 1.0
    assert speech != babble
    assert speech > babble


def test_forced_language_is_kept(stt: SpeechToText, french: np.ndarray) -> None:
    result = stt.transcribe(french, "mg")
    assert result.language == "mg"
    assert result.language_probability == 1.0


def test_detection_is_limited_to_configured_languages(stt: SpeechToText) -> None:
    english = speak("Hello, this is a test of the speech recognition system.", voice="en", words_per_minute=160)
    assert stt.transcribe(english, "auto").language in ("mg", "fr")


class CountingModel:
    """Forwards to the CTranslate2 model and counts the calls that decode."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.generate_calls = 0
        self.encode_calls = 0

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        self.generate_calls += 1
        return self._model.generate(*args, **kwargs)

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        self.encode_calls += 1
        return self._model.encode(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def test_batch_is_decoded_in_one_call(stt: SpeechToText, french: np.ndarray) -> None:
    other = speak("Merci beaucoup, au revoir.")
    alone = [stt.transcribe(french, "fr").text, stt.transcribe(other, "fr").text]
    backend = stt.backend
    assert isinstance(backend, CTranslate2Backend)
    counting = CountingModel(backend.model)
    backend.model = counting  # type: ignore[assignment]
    try:
        batch = stt.transcribe_batch([SttRequest(french, "fr"), SttRequest(other, "fr"), SttRequest(french, "auto")])
    finally:
        backend.model = counting._model
    assert counting.generate_calls == 1
    assert counting.encode_calls == 1
    assert [r.text for r in batch[:2]] == alone
    assert batch[2].text == alone[0]


def test_long_audio_is_segmented(stt: SpeechToText, french: np.ndarray) -> None:
    pause = np.zeros(16000, dtype=np.float32)
    long_audio = np.concatenate([french, pause] * 14)  # about 65 s
    assert long_audio.size / 16000 > 60
    result = stt.transcribe(long_audio, "fr")
    assert result.duration > 60
    assert result.segments[-1].end > 45  # the text reaches the last window
    assert result.text.lower().count("bonjour") >= 5


def test_fixed_windows_when_no_speech_is_found(stt: SpeechToText) -> None:
    silence = np.zeros(16000 * 40, dtype=np.float32)
    result = stt.transcribe(silence, "fr")
    assert result.duration == pytest.approx(40.0)


@pytest.mark.parametrize(
    ("audio", "language", "message"),
    [
        (np.zeros(0, dtype=np.float32), "fr", "empty"),
        (np.full(1600, np.nan, dtype=np.float32), "fr", "NaN"),
        (np.zeros(1600, dtype=np.float32), "xx", "language"),
    ],
)
def test_bad_input_is_refused(stt: SpeechToText, audio: np.ndarray, language: str, message: str) -> None:
    with pytest.raises(SttInputError, match=message):
        stt.transcribe(audio, language)
    # In a batch, the refusal is that request's answer; the others are transcribed.
    tone = np.sin(np.arange(16000, dtype=np.float32) / 10) * 0.1
    answered, refused = stt.transcribe_batch([SttRequest(tone, "fr"), SttRequest(audio, language)])
    assert isinstance(refused, SttInputError) and message in str(refused)
    assert isinstance(answered, Transcription) and answered.duration == 1.0


@pytest.mark.parametrize("n_mels", [80, 128])
def test_batched_torch_features_equal_faster_whispers(n_mels: int) -> None:
    """The GPU path's features (whisper/features.py, run here on the CPU) are faster-whisper's, to float precision."""
    from faster_whisper.feature_extractor import FeatureExtractor

    from milo_voice.roles.whisper.features import LogMelExtractor

    rng = np.random.default_rng(3)
    windows = (rng.standard_normal((3, 480000)) * 0.1).astype(np.float32)
    windows[1, 64000:] = 0.0  # a 4 s clip, zero padded to its window
    windows[2] = 0.0  # silence: the clipping floor
    reference = FeatureExtractor(feature_size=n_mels)
    expected = np.stack([reference(w)[:, :3000] for w in windows])
    got = LogMelExtractor(n_mels)(windows).numpy()
    assert got.shape == expected.shape == (3, n_mels, 3000)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_torch_features_transcribe_like_numpy_features(embedded_dir: Path, french: np.ndarray) -> None:
    numpy_features = SpeechToText(str(embedded_dir / "stt"), options=SttOptions(compute_type="int8", features="numpy"))
    torch_features = SpeechToText(str(embedded_dir / "stt"), options=SttOptions(compute_type="int8", features="torch"))
    # Features differ by float rounding only (the test above), so do the scores, barely.
    _assert_transcribes_alike(numpy_features, torch_features, french)


def _assert_transcribes_alike(reference: SpeechToText, other: SpeechToText, speech: np.ndarray) -> None:
    """Same text and languages, confidence within 0.01, for one request detected and one told."""
    requests = [SttRequest(speech, "auto"), SttRequest(speech, "fr")]
    expected = reference.transcribe_batch(requests)
    got = other.transcribe_batch(requests)
    assert "bonjour" in expected[0].text.lower()
    assert [r.text for r in got] == [r.text for r in expected]
    assert [r.language for r in got] == [r.language for r in expected] == ["fr", "fr"]
    assert got[0].confidence == pytest.approx(expected[0].confidence, abs=0.01)


@pytest.fixture(scope="module")
def exact(embedded_dir: Path) -> SpeechToText:
    """float32 and CTranslate2's own encoder: what the torch encoder is held to."""
    return SpeechToText(str(embedded_dir / "stt"), options=SttOptions(compute_type="float32", encoder="ctranslate2"))


def test_torch_encoder_computes_ctranslate2s_encoder_output(
    embedded_dir: Path, exact: SpeechToText, french: np.ndarray
) -> None:
    import ctranslate2
    import torch

    from milo_voice.roles.whisper.encoder import WhisperEncoder

    features = np.ascontiguousarray(exact.features.one(french)[None])
    expected = np.array(exact.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
    got = WhisperEncoder.from_model_dir(embedded_dir / "stt")(torch.from_numpy(features)).numpy()
    assert got.shape == expected.shape == (1, 1500, 512)
    # float32 on both sides; what differs is the order of the sums.
    np.testing.assert_allclose(got, expected, atol=2e-3, rtol=1e-3)


def test_int8_weights_are_dequantised_like_ctranslate2(
    embedded_dir: Path, exact: SpeechToText, french: np.ndarray
) -> None:
    import torch

    from milo_voice.roles.ctranslate2_files import read_model_bin
    from milo_voice.roles.whisper.encoder import WhisperEncoder

    weights = read_model_bin(embedded_dir / "stt" / "model.bin", prefix="encoder/")
    quantized = dict(weights)
    for name, value in weights.items():
        if name.endswith("linear_0/weight"):  # CTranslate2's int8: round(w * 127 / max|row|) and the scale
            scale = 127.0 / np.abs(value.astype(np.float32)).max(axis=1)
            quantized[name] = np.round(value.astype(np.float32) * scale[:, None]).astype(np.int8)
            quantized[name.removesuffix("weight") + "weight_scale"] = scale.astype(np.float32)
    features = torch.from_numpy(exact.features.one(french)[None])
    full, dequantised = WhisperEncoder(weights)(features), WhisperEncoder(quantized)(features)
    # int8 rounding moves the states a little, not more: same encoder, same scales.
    assert torch.nn.functional.cosine_similarity(full.flatten(), dequantised.flatten(), dim=0) > 0.99


def test_torch_encoder_transcribes_like_ctranslate2(
    embedded_dir: Path, exact: SpeechToText, french: np.ndarray
) -> None:
    torch_encoder = SpeechToText(str(embedded_dir / "stt"), options=SttOptions(compute_type="float32", encoder="torch"))
    _assert_transcribes_alike(exact, torch_encoder, french)


def test_a_model_bin_of_another_kind_is_refused(embedded_dir: Path) -> None:
    from milo_voice.roles.ctranslate2_files import ModelFileError, read_model_bin

    with pytest.raises(ModelFileError, match="not a WhisperSpec"):
        read_model_bin(embedded_dir / "translate" / "model.bin")


def test_a_short_window_is_encoded_over_its_own_length(embedded_dir: Path, french: np.ndarray) -> None:
    """min_encoded_seconds below 30: the encoder reads the audio's seconds plus one, at least the
    minimum, and the transcript is still French with its segments inside the clip."""
    cut = SpeechToText(str(embedded_dir / "stt"), options=SttOptions(compute_type="int8", min_encoded_seconds=4))
    seen: list[tuple[int, ...]] = []
    decode = cut.backend.decode

    def recording(requests: Any, windows: Any, features: Any) -> Any:
        seen.append(tuple(features.shape))
        return decode(requests, windows, features)

    cut.backend.decode = recording  # type: ignore[method-assign]
    result = cut.transcribe(french, "auto")
    assert result.language == "fr" and "bonjour" in result.text.lower()
    assert result.segments[-1].end <= result.duration + 0.05
    seconds = int(np.ceil(french.size / 16000)) + 1
    assert seen == [(1, 80, max(4, seconds) * 100)]


def test_a_batch_is_encoded_over_its_longest_window_and_never_past_30_s() -> None:
    from milo_voice.roles.whisper.features import encoded_frames
    from milo_voice.roles.whisper.windows import Window

    def window(seconds: float) -> Window:
        return Window(0, 0.0, np.zeros(int(seconds * 16000), np.float32))

    assert encoded_frames([window(2.5)], 30) == 3000
    assert encoded_frames([window(2.5)], 10) == 1000  # the minimum
    assert encoded_frames([window(2.5), window(12.2)], 10) == 1400  # 13 s, and one more
    assert encoded_frames([window(29.5)], 10) == 3000
    assert encoded_frames([window(2.5)], 2) == 400


def test_the_window_cut_is_checked_and_read_per_device() -> None:
    with pytest.raises(ValueError, match="min_encoded_seconds"):
        SttOptions(min_encoded_seconds=0.5)
    params = {"min_encoded_seconds": 10}
    assert SttOptions.from_params(params, "int8", 2).min_encoded_seconds == 10
    assert SttOptions.from_params(params, "float16", 0, on_gpu=True).min_encoded_seconds == 30
    assert (
        SttOptions.from_params({**params, "gpu_min_encoded_seconds": 20}, "float16", 0, on_gpu=True).min_encoded_seconds
        == 20
    )


def test_the_torch_decoder_refuses_a_cut_window(embedded_dir: Path) -> None:
    options = SttOptions(compute_type="float32", encoder="torch", decoder="torch", min_encoded_seconds=10)
    with pytest.raises(ValueError, match="30 s windows"):
        SpeechToText(str(embedded_dir / "stt"), options=options)
