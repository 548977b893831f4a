"""Audio in and out of the facade: any common upload to 16 kHz mono, and synthesis to the asked format.

Decoding and the compressed encoders use FFmpeg through PyAV (the wheel bundles it);
WAV and FLAC are written with libsndfile.
"""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import soundfile as sf

from contract.records import STT_SAMPLE_RATE

MEDIA_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "ogg": "audio/ogg",
    "opus": "audio/ogg; codecs=opus",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "pcm": "audio/L16",
}
# (container, codec, sample rate the codec is given) for the FFmpeg-encoded formats.
# Written by libsndfile: lossless, and Vorbis, which FFmpeg's own encoder (the one its wheel
# bundles) writes as stereo only and with granule positions that made readers take a 5.4 s clip
# for 12 to 76 ms.
_SNDFILE_FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS")}
_AV_FORMATS = {"opus": ("ogg", "libopus", 48000), "mp3": ("mp3", "libmp3lame", None)}


class UndecodableAudioError(ValueError):
    """The upload is not audio that FFmpeg can decode."""


class TooLongAudioError(ValueError):
    """The upload is longer than it may be: said by its header, or found while decoding."""


def decode_upload(data: bytes, sample_rate: int = STT_SAMPLE_RATE, max_seconds: float = float("inf")) -> np.ndarray:
    """wav, flac, ogg/opus, mp3, webm, m4a... to mono float32 at ``sample_rate``.

    Mono WAV or FLAC already at ``sample_rate`` (what voice clients send) is read by
    libsndfile directly; the rest goes through FFmpeg (PyAV, no model library, so the
    facade image stays small). A damaged frame ends the decoding there, as a player
    would stop; what came before it is kept.

    Audio longer than ``max_seconds`` is refused (``TooLongAudioError``) by its header's duration
    before anything is decoded, or, where the header does not say, as soon as the decoding passes
    the limit: a small file of hours of silence costs neither the time nor the memory of hours.
    """
    ready = _ready_pcm(data, sample_rate, max_seconds)
    if ready is not None:
        return ready
    chunks: list[np.ndarray] = []
    decoded, most = 0, max_seconds * sample_rate
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise UndecodableAudioError("cannot decode the audio: the file has no audio stream")
            if container.duration is not None and container.duration / av.time_base > max_seconds:
                raise TooLongAudioError(f"its header says {container.duration / av.time_base:.0f} s")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            frames = container.decode(audio=0)
            while True:
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                except av.error.InvalidDataError:
                    break
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    decoded += chunks[-1].size
                if decoded > most:
                    raise TooLongAudioError(f"more than {max_seconds:g} s decoded")
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        if isinstance(exc, (UndecodableAudioError, TooLongAudioError)):
            raise
        raise UndecodableAudioError(f"cannot decode the audio: {exc}") from exc
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, dtype=np.float32)
    if samples.size > most:
        raise TooLongAudioError(f"{samples.size / sample_rate:.0f} s decoded")
    return samples


def _ready_pcm(data: bytes, sample_rate: int, max_seconds: float = float("inf")) -> np.ndarray | None:
    """Mono WAV/FLAC at ``sample_rate``, read without FFmpeg; None for anything else."""
    if not data.startswith((b"RIFF", b"fLaC")):
        return None
    try:
        with sf.SoundFile(io.BytesIO(data)) as file:
            if file.samplerate != sample_rate or file.channels != 1:
                return None
            if file.frames / file.samplerate > max_seconds:
                raise TooLongAudioError(f"its header says {file.frames / file.samplerate:.0f} s")
            return file.read(dtype="float32")
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None  # FFmpeg may still read what libsndfile cannot


def _pcm16(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")


def encode(audio: np.ndarray, sample_rate: int, audio_format: str) -> bytes:
    if audio_format == "pcm":
        return _pcm16(audio).tobytes()
    if audio_format in _SNDFILE_FORMATS:
        container, subtype = _SNDFILE_FORMATS[audio_format]
        buffer = io.BytesIO()
        sf.write(buffer, audio, sample_rate, format=container, subtype=subtype)
        return buffer.getvalue()
    container, codec, codec_rate = _AV_FORMATS[audio_format]
    return _encode_with_ffmpeg(audio, sample_rate, container, codec, codec_rate or sample_rate)


def _encode_with_ffmpeg(audio: np.ndarray, sample_rate: int, container: str, codec: str, codec_rate: int) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        layout = "mono"
        stream = output.add_stream(codec, rate=codec_rate)
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(audio.astype(np.float32)[None, :], format="flt", layout="mono")
        frame.sample_rate = sample_rate
        resampler = av.AudioResampler(format=stream.codec_context.format, layout=layout, rate=codec_rate)
        for resampled in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(resampled):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


def streaming_wav_header(sample_rate: int) -> bytes:
    """A WAV header for 16-bit mono audio of unknown length (sizes set to the maximum)."""
    unknown = 0xFFFFFFFF
    return (
        b"RIFF" + struct.pack("<I", unknown) + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data" + struct.pack("<I", unknown)
    )  # fmt: skip
