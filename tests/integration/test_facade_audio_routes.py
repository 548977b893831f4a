"""POST /v1/tts and POST /v1/stt end to end: facade in process, real PyTriton host, audio decoded back."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from api_facade.audio import decode_upload, encode
from tests.conftest import TritonHost, facade_client, speak

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(triton_host: TritonHost) -> Iterator[TestClient]:
    limits = {"MILO_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024), "MILO_MAX_AUDIO_SECONDS": "60"}
    with facade_client(triton_host.http_url, triton_host.grpc_url, **limits) as client:
        yield client


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return speak("Bonjour, je voudrais acheter du riz au marché.")


@pytest.mark.parametrize("audio_format", ["wav", "flac", "ogg", "opus", "mp3"])
def test_tts_formats_decode_back_to_the_same_duration(api: TestClient, audio_format: str) -> None:
    body = {"text": "Tamin'ny 2024 dia tonga izy.", "language": "mg", "format": audio_format}
    response = api.post("/v1/tts", json=body)
    assert response.status_code == 200
    duration = float(response.headers["X-Audio-Duration"])
    assert 1.5 < duration < 6
    decoded = decode_upload(response.content)
    assert decoded.size / 16000 == pytest.approx(duration, abs=0.1)


@pytest.mark.parametrize("audio_format", ["ogg", "flac", "wav"])
def test_tts_files_state_one_channel_and_their_length_to_every_reader(
    api: TestClient, audio_format: str, tmp_path: Path
) -> None:
    """What players and tools read from the file's own headers and pages (not a full decode):
    FFmpeg's ffprobe, sox and libsndfile."""
    body = {"text": "Tamin'ny 2024 dia tonga izy.", "language": "mg", "format": audio_format}
    response = api.post("/v1/tts", json=body)
    assert response.status_code == 200
    duration = float(response.headers["X-Audio-Duration"])
    path = tmp_path / f"speech.{audio_format}"
    path.write_bytes(response.content)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=channels:format=duration", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    probed = json.loads(probe.stdout)
    assert probed["streams"][0]["channels"] == 1
    assert float(probed["format"]["duration"]) == pytest.approx(duration, abs=0.05)
    sox = subprocess.run(["soxi", "-D", str(path)], capture_output=True, text=True, check=True)
    assert float(sox.stdout) == pytest.approx(duration, abs=0.05)
    info = sf.info(str(path))
    assert info.channels == 1 and info.duration == pytest.approx(duration, abs=0.05)


def test_tts_wav_and_pcm(api: TestClient) -> None:
    wav = api.post("/v1/tts", json={"text": "Bonjour à tous.", "language": "fr"})
    assert wav.headers["content-type"] == "audio/wav"
    audio, rate = sf.read(io.BytesIO(wav.content))
    assert rate == 16000 and audio.ndim == 1
    pcm = api.post("/v1/tts", json={"text": "Bonjour à tous.", "language": "fr", "format": "pcm"})
    assert len(pcm.content) == 2 * audio.size


def test_tts_stream_starts_before_synthesis_ends(api: TestClient) -> None:
    text = " ".join(["Manao ahoana daholo ianareo."] * 6)
    started = time.perf_counter()
    whole = api.post("/v1/tts", json={"text": text, "language": "mg", "format": "pcm"})
    whole_s = time.perf_counter() - started
    started = time.perf_counter()
    chunks = []
    first_byte_s = None
    with api.stream("POST", "/v1/tts", json={"text": text, "language": "mg", "format": "pcm", "stream": True}) as r:
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            first_byte_s = first_byte_s or time.perf_counter() - started
            chunks.append(chunk)
    print(f"tts: first byte after {first_byte_s * 1000:.0f} ms, whole synthesis {whole_s * 1000:.0f} ms")
    assert first_byte_s < whole_s
    # Sentence by sentence, the streamed audio is about as long as the whole one.
    assert abs(len(b"".join(chunks)) - len(whole.content)) < 0.1 * len(whole.content)


def test_tts_stream_as_wav_has_a_header(api: TestClient) -> None:
    response = api.post("/v1/tts", json={"text": "Salama. Veloma.", "language": "mg", "stream": True})
    assert response.content[:4] == b"RIFF" and response.content[8:12] == b"WAVE"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "", "language": "mg"}, "text"),
        ({"text": "  ", "language": "mg"}, "text"),
        ({"text": "Salama", "language": "xx"}, "language"),
        ({"text": "Salama", "language": "mg", "format": "aiff"}, "format"),
        ({"text": "Salama", "language": "mg", "format": "flac", "stream": True}, "stream"),
        ({"text": "Salama", "language": "mg", "speed": 0}, "speed"),
        ({"text": "Salama", "language": "mg", "voice": "nobody"}, "voice"),
    ],
)
def test_tts_bad_input(api: TestClient, body: dict[str, object], field: str) -> None:
    response = api.post("/v1/tts", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field


@pytest.mark.parametrize("audio_format", ["wav", "flac", "ogg", "mp3"])
def test_stt_multipart_in_several_formats(api: TestClient, clip: np.ndarray, audio_format: str) -> None:
    data = encode(clip, 16000, audio_format)
    response = api.post("/v1/stt", files={"file": (f"clip.{audio_format}", data)}, data={"language": "auto"})
    assert response.status_code == 200
    body = response.json()
    assert "bonjour" in body["text"].lower()
    assert body["language"] == "fr"
    assert body["duration"] == pytest.approx(clip.size / 16000, abs=0.15)
    assert "segments" not in body


@pytest.mark.parametrize(("suffix", "codec"), [("webm", "libopus"), ("m4a", "aac"), ("opus", "libopus")])
def test_stt_webm_m4a_and_opus_uploads(
    api: TestClient, clip: np.ndarray, suffix: str, codec: str, tmp_path: Path
) -> None:
    """Containers a browser or a phone records, made here with the ffmpeg binary."""
    source, target = tmp_path / "clip.wav", tmp_path / f"clip.{suffix}"
    source.write_bytes(encode(clip, 16000, "wav"))
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(source), "-c:a", codec, str(target)], check=True)
    response = api.post("/v1/stt", files={"file": (target.name, target.read_bytes())}, data={"language": "fr"})
    assert response.status_code == 200, response.text
    assert "bonjour" in response.json()["text"].lower()
    assert response.json()["duration"] == pytest.approx(clip.size / 16000, abs=0.15)


def test_stt_base64_json_and_response_formats(api: TestClient, clip: np.ndarray) -> None:
    audio = base64.b64encode(encode(clip, 16000, "wav")).decode()
    verbose = api.post("/v1/stt", json={"audio": audio, "language": "fr", "response_format": "verbose_json"}).json()
    assert verbose["segments"] and verbose["segments"][0]["start"] == 0.0
    text = api.post("/v1/stt", json={"audio": audio, "language": "fr", "response_format": "text"})
    assert text.headers["content-type"].startswith("text/plain") and "bonjour" in text.text.lower()
    srt = api.post("/v1/stt", json={"audio": audio, "language": "fr", "response_format": "srt"}).text
    assert srt.startswith("1\n00:00:00,000 --> ")
    vtt = api.post("/v1/stt", json={"audio": audio, "language": "fr", "response_format": "vtt"}).text
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")


def test_stt_errors(api: TestClient, clip: np.ndarray) -> None:
    wav = encode(clip, 16000, "wav")
    too_big = api.post("/v1/stt", files={"file": ("big.wav", b"\0" * (3 * 1024 * 1024))})
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "payload_too_large"
    too_long = api.post(
        "/v1/stt", files={"file": ("long.flac", encode(np.zeros(16000 * 61, np.float32), 16000, "flac"))}
    )
    assert too_long.status_code == 413
    garbage = api.post("/v1/stt", files={"file": ("x.wav", b"not audio at all" * 10)})
    assert garbage.status_code == 415
    empty = api.post("/v1/stt", files={"file": ("x.wav", b"")})
    assert empty.status_code == 422 and empty.json()["error"]["field"] == "audio"
    wrong_type = api.post("/v1/stt", content=wav, headers={"content-type": "audio/wav"})
    assert wrong_type.status_code == 415
    bad_language = api.post("/v1/stt", files={"file": ("a.wav", wav)}, data={"language": "de"})
    assert bad_language.status_code == 422 and bad_language.json()["error"]["field"] == "language"
    bad_base64 = api.post("/v1/stt", json={"audio": "%%%"})
    assert bad_base64.status_code == 422 and bad_base64.json()["error"]["field"] == "audio"
    no_file = api.post("/v1/stt", data={"language": "fr"}, files={"other": ("a.txt", b"x")})
    assert no_file.status_code == 422 and no_file.json()["error"]["field"] == "file"


def test_tts_batch_as_json_and_zip(api: TestClient) -> None:
    texts = ["Salama.", "Misaotra betsaka tompoko, veloma.", "Tonga soa."]
    body = api.post("/v1/tts/batch", json={"texts": texts, "language": "mg", "format": "flac"}).json()
    assert [c["text"] for c in body["clips"]] == texts
    for clip in body["clips"]:
        decoded = decode_upload(base64.b64decode(clip["data"]))
        assert decoded.size / 16000 == pytest.approx(clip["duration"], abs=0.05)
    assert body["clips"][1]["duration"] > body["clips"][0]["duration"]
    zipped = api.post("/v1/tts/batch", json={"texts": texts, "language": "mg", "format": "mp3", "packaging": "zip"})
    assert zipped.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:
        assert archive.namelist() == ["000.mp3", "001.mp3", "002.mp3"]
        assert decode_upload(archive.read("001.mp3")).size > 16000
    bad = api.post("/v1/tts/batch", json={"texts": ["Salama", " "], "language": "mg"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "texts"


def test_triton_timeout_is_504(triton_host: TritonHost, clip: np.ndarray) -> None:
    """The facade waits for the tier's queue timeout plus its compute budget, then answers 504."""
    tier = {"priority": 2, "queue_timeout_s": 0.01, "limits": {"default": "1000/minute"}}
    tiers = json.dumps({"premium": {**tier, "priority": 1}, "standard": tier})
    with facade_client(triton_host.http_url, MILO_TRITON_TIMEOUT_S="0.05", MILO_TIERS=tiers) as client:
        response = client.post("/v1/stt", files={"file": ("a.wav", encode(clip, 16000, "wav"))})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "model_timeout"
