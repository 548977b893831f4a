"""Latency of one request per role: in process (the role class) and through Triton (HTTP).

    python loadtests/single_request_latency.py --triton 127.0.0.1:8000 [--runs 10]

Prints the median of ``--runs`` calls for each role, measured side by side in one run,
and the difference (what the Triton hop costs). Uses the active profile's weights.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from client import MiloTritonClient
from milo_voice.registry import active_profile, load_registry
from pytriton_app.instances import Device, build_instance

SENTENCE_FR = "Bonjour, je voudrais acheter du riz au marché."
SENTENCE_MG = "Manao ahoana daholo ianareo, tonga soa eto Madagasikara."


def espeak(text: str) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
        subprocess.run(["espeak-ng", "-v", "fr+m3", "-s", "120", "-w", wav.name, text], check=True)
        audio, rate = sf.read(wav.name, dtype="float32")
    return resample_poly(audio, 16000, rate).astype(np.float32)


def median_ms(call: Callable[[], object], runs: int) -> float:
    call()  # warm
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--triton", default="127.0.0.1:8000")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    registry, profile = load_registry(), active_profile()
    roles = {name: build_instance(spec, profile, Device("cpu")) for name, spec in registry.models.items()}
    clip = espeak(SENTENCE_FR)
    messages = [{"role": "user", "content": "Bonjour, comment vas-tu ?"}]
    from milo_voice.roles.chat import ChatMessage, ChatRequest

    chat_request = ChatRequest([ChatMessage("user", messages[0]["content"])], max_tokens=32, temperature=0.0)
    remote = MiloTritonClient(args.triton)
    cases = {
        f"stt ({clip.size / 16000:.1f} s clip)": (
            lambda: roles["stt"].transcribe(clip, "fr"),
            lambda: remote.transcribe(clip, "fr"),
        ),
        f"tts ({len(SENTENCE_MG)} chars)": (
            lambda: roles["tts"].synthesize(SENTENCE_MG, "mg"),
            lambda: remote.synthesize(SENTENCE_MG, "mg"),
        ),
        "translate (one sentence)": (
            lambda: roles["translate"].translate(SENTENCE_MG, "mg", "fr"),
            lambda: remote.translate(SENTENCE_MG, "mg", "fr"),
        ),
        "chat (32 tokens max)": (
            lambda: roles["chat"].complete(chat_request),
            lambda: remote.chat(messages, max_tokens=32, temperature=0.0),
        ),
    }
    print(f"profile {profile}, median of {args.runs} runs, one request at a time")
    print(f"{'request':<28} {'in process':>11} {'via Triton':>11} {'overhead':>9}")
    for name, (local, served) in cases.items():
        in_process, via_triton = median_ms(local, args.runs), median_ms(served, args.runs)
        print(f"{name:<28} {in_process:>9.1f}ms {via_triton:>9.1f}ms {via_triton - in_process:>7.1f}ms")


if __name__ == "__main__":
    main()
