"""``python -m loadtests.bench.gpu PHASE``: one phase of the GPU benchmark (see the package's doc)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from loadtests.bench.gpu.build import phase_build
from loadtests.bench.gpu.common import FACADE_WORKERS, LEVELS, REPO
from loadtests.bench.gpu.goals import phase_goals
from loadtests.bench.gpu.inprocess import phase_inprocess
from loadtests.bench.gpu.served import phase_locust, phase_overhead, phase_served, phase_voice
from loadtests.bench.gpu.tune import phase_tune


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "phase", choices=["build", "inprocess", "tune", "served", "locust", "overhead", "voice", "goals"]
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/milo-gpu"))
    parser.add_argument("--assets", default=os.environ.get("MILO_GPU_ASSETS", str(REPO / ".gpu-assets")))
    parser.add_argument("--only", default="", help="build/inprocess: a subset of stt,tts,translate,chat")
    parser.add_argument("--no-large-v3", action="store_true", help="build: the turbo STT shape only")
    parser.add_argument(
        "--references", action="store_true",
        help="inprocess: only the rates the served levels are set beside (STT's role in torch, TTS, "
        "translation's batches and its step-level loop of 64), for a lease that measures the goals",
    )  # fmt: skip
    parser.add_argument("--variants", default="configured,unbatched", help="served/locust/goals: registry variants")
    parser.add_argument(
        "--endpoints", default="stt,tts,translate,chat",
        help="served: endpoints measured, each at --levels or at its own (stt-short:1, tts:1/64)",
    )  # fmt: skip
    parser.add_argument("--drop", default="", help="served/locust: models left out of the variants")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--levels", type=lambda text: [int(x) for x in text.split(",")], default=list(LEVELS))
    parser.add_argument("--profile", default="production", help="embedded: dry-run served/locust without a GPU")
    parser.add_argument("--duration", default="60s")
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="served, voice: how long each level is measured (new turns)"
    )
    parser.add_argument("--warmup", type=float, default=5.0, help="served: seconds each level sends before counting")
    parser.add_argument(
        "--gpu-sample-s", type=float, default=0.5,
        help="served: seconds between reads of the GPU's utilisation (nvidia-smi); 0: not read",
    )  # fmt: skip
    parser.add_argument(
        "--facade-workers", type=int, default=FACADE_WORKERS,
        help="served/locust/goals: the facade's processes (by default as its image runs them)",
    )  # fmt: skip
    parser.add_argument(
        "--mps", action="store_true", help="served/locust/voice: the stack's processes share the GPU through CUDA MPS"
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="voice: the length of every reply")
    parser.add_argument("--methods", default="", help="voice: the ways measured (default: all of voice_turn's)")
    parser.add_argument(
        "--server", choices=("pytriton", "tritonserver"), default="pytriton", help="served/locust/goals: which Triton"
    )
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    # A phase stopped from outside (`timeout`, a call's limit) stops the stack it started on its way
    # out: one left running would share the GPU with the next phase and falsify its figures.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    phases: dict[str, Callable[[argparse.Namespace], None]] = {
        "build": phase_build, "inprocess": phase_inprocess, "tune": phase_tune,
        "served": phase_served, "locust": phase_locust, "overhead": phase_overhead, "voice": phase_voice,
        "goals": phase_goals,
    }  # fmt: skip
    phases[args.phase](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
