"""Upload decoding: mono WAV/FLAC at 16 kHz skip FFmpeg, with the same samples as the FFmpeg path."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from api_facade import audio


def encoded(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture
def speech_like() -> np.ndarray:
    return (np.random.default_rng(5).standard_normal(16000 * 3) * 0.1).astype(np.float32)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_ready_pcm_is_read_without_ffmpeg_and_matches_it(speech_like: np.ndarray, fmt: str) -> None:
    data = encoded(speech_like, 16000, fmt)
    direct = audio._ready_pcm(data, 16000)
    assert direct is not None and direct.dtype == np.float32
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(audio, "_ready_pcm", lambda _data, _rate, _most: None)
        through_ffmpeg = audio.decode_upload(data)
    np.testing.assert_array_equal(audio.decode_upload(data), through_ffmpeg)
    np.testing.assert_allclose(direct, speech_like, atol=1 / 32768 + 1e-6)


def test_other_rates_channels_and_containers_go_through_ffmpeg(speech_like: np.ndarray) -> None:
    stereo = encoded(np.stack([speech_like, speech_like], axis=1), 16000, "WAV")
    high_rate = encoded(speech_like, 48000, "WAV")
    assert audio._ready_pcm(stereo, 16000) is None
    assert audio._ready_pcm(high_rate, 16000) is None
    assert audio._ready_pcm(b"RIFF not really a wav", 16000) is None
    assert audio.decode_upload(stereo).shape == speech_like.shape
    assert audio.decode_upload(high_rate).size == pytest.approx(speech_like.size / 3, abs=2)
    with pytest.raises(audio.UndecodableAudioError):
        audio.decode_upload(b"RIFF not really a wav")


@pytest.mark.parametrize("fmt", ["wav", "ogg", "mp3", "webm"])
def test_audio_past_the_limit_is_refused_by_its_header_or_as_soon_as_decoding_passes_it(fmt: str) -> None:
    """A minute of silence against a 5 s limit: the header says so (WAV, MP3, WebM), or the
    decoding stops at the limit, not at the end of the file (this Ogg file's header says 4 s)."""
    minute = np.zeros(60 * 16000, np.float32)
    data = audio.encode(minute, 16000, fmt) if fmt != "webm" else _webm(minute)
    with pytest.raises(audio.TooLongAudioError):
        audio.decode_upload(data, 16000, max_seconds=5)
    assert audio.decode_upload(data, 16000, max_seconds=61).size >= 59 * 16000


def _webm(samples: np.ndarray) -> bytes:
    """Opus in WebM, as a browser's MediaRecorder sends speech."""
    import av

    out = io.BytesIO()
    with av.open(out, mode="w", format="webm") as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = 16000
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for resampled in resampler.resample(frame):
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()
