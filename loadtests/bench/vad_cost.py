"""What the facade's speech check costs an uploaded file: read whole, against read until speech starts.

    python -m loadtests.bench.vad_cost [--rounds 7] [--calls 5] [--out docs/benchmarks/vad]

Every transcription through the facade (``/v1/stt``, the OpenAI-compatible route, a spoken
question) is checked for speech beside Whisper (``VadModel.has_speech``), so that silence is never
answered with what a recogniser made up. The check used to read each file whole; it now reads
chunks that double from ``FIRST_CHUNK_S`` and stops where speech starts. This times both ways on
the files the load tests upload (French said by espeak-ng) and on files where speech comes late or
never, on this machine's CPU: the two ways take turns, round by round, and each file's row gives
the median milliseconds a check, the whole reading's over the other's, and the answer (which
must be the same both ways).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from api_facade.voice.vad import FIRST_CHUNK_S, LONGEST_CHUNK_S, VadModel
from loadtests.payloads import CLIP_TEXTS, spoken

RATE = 16000


def files() -> dict[str, np.ndarray]:
    said = {kind: spoken(text, "fr", 140) for kind, text in CLIP_TEXTS.items()}
    silence = np.zeros(8 * RATE, np.float32)
    return {
        **{f"{kind} clip ({len(audio) / RATE:.1f} s)": audio for kind, audio in said.items()},
        "8 s of silence, then the long clip": np.concatenate([silence, said["long"]]),
        "silence, 10 s": np.zeros(10 * RATE, np.float32),
        "silence, 60 s": np.zeros(60 * RATE, np.float32),
        "faint noise, 10 s": np.random.default_rng(0).normal(0, 0.01, 10 * RATE).astype(np.float32),
    }


def measure(rounds: int, calls: int) -> dict[str, Any]:
    model = VadModel()
    ways = {"whole": LONGEST_CHUNK_S, "until speech": FIRST_CHUNK_S}
    rows = []
    for name, audio in files().items():
        times: dict[str, list[float]] = {way: [] for way in ways}
        answers = {way: model.has_speech(audio, first_chunk_s=first) for way, first in ways.items()}  # warm
        for _ in range(rounds):
            for way, first in ways.items():
                started = time.perf_counter()
                for _ in range(calls):
                    model.has_speech(audio, first_chunk_s=first)
                times[way].append((time.perf_counter() - started) * 1000 / calls)
        medians = {way: statistics.median(values) for way, values in times.items()}
        rows.append(
            {
                "file": name,
                "seconds": round(len(audio) / RATE, 2),
                "speech": answers["until speech"],
                "same_answer": len(set(answers.values())) == 1,
                "whole_ms": round(medians["whole"], 3),
                "until_speech_ms": round(medians["until speech"], 3),
                "whole_over_until_speech": round(medians["whole"] / medians["until speech"], 2),
            }
        )
    return {
        "machine": f"{len(os.sched_getaffinity(0))} cores (the model runs on one thread)",
        "first_chunk_s": FIRST_CHUNK_S,
        "longest_chunk_s": LONGEST_CHUNK_S,
        "rounds": rounds,
        "calls": calls,
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# The facade's speech check on an uploaded file, {result['machine']}",
        "",
        f"Median ms a check over {result['rounds']} alternating rounds of {result['calls']} checks a way. "
        f"whole: the file read in chunks of {result['longest_chunk_s']:g} s (the reading before); until speech: "
        f"chunks doubling from {result['first_chunk_s']:g} s, stopped where speech starts.",
        "",
        "| file | s | speech | same answer | whole ms | until speech ms | whole / until speech |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['file']} | {r['seconds']} | {r['speech']} | {r['same_answer']} | {r['whole_ms']} | "
            f"{r['until_speech_ms']} | {r['whole_over_until_speech']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/vad"))
    args = parser.parse_args(argv)
    result = measure(args.rounds, args.calls)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vad_cost.json").write_text(json.dumps(result, indent=1))
    (args.out / "vad_cost.md").write_text(markdown(result))
    print(markdown(result))
    if not all(row["same_answer"] for row in result["rows"]):
        raise SystemExit("the two readings answered differently")


if __name__ == "__main__":
    main()
