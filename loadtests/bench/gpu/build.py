"""Phase ``build``: the production shapes with seeded weights (``loadtests.bench.shapes``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from loadtests.bench.gpu.common import save


def phase_build(args: argparse.Namespace) -> None:
    from loadtests.bench import shapes

    assets = Path(args.assets)
    only = [x for x in args.only.split(",") if x] or list(shapes.MODELS)

    def build(models: list[str]) -> dict[str, float]:
        return shapes.build_all(
            args.work / "models", "large-v3-turbo", assets / "whisper-tokenizer.json",
            assets / "chat-tokenizer.json", "cuda", models,
        )  # fmt: skip

    # Chat's shape is quantised by llama.cpp: while `gpu_device.sh llama-build` compiles it, the
    # others are built and chat is left for a call after `llama-wait` (this process could not load
    # the library the compile makes: its library path was set when it started).
    chat_waits = "chat" in only and llama_compiling(args.work)
    built_now = [name for name in only if not (name == "chat" and chat_waits)]
    seconds = build(built_now) if built_now else {}
    if "stt" in only and not args.no_large_v3:
        started = time.perf_counter()
        target = args.work / "models-large-v3" / "production" / "stt"
        shapes.build_whisper(target, shapes.WHISPER_SHAPES["large-v3"], assets / "whisper-tokenizer.json", "cuda")
        (target / ".complete").write_text("seeded")
        seconds["stt large-v3"] = round(time.perf_counter() - started, 1)
    sizes = {
        str(p.relative_to(args.work)): round(p.stat().st_size / 2**20, 1)
        for p in args.work.glob("models*/production/**/*") if p.is_file() and p.stat().st_size > 2**20
    }  # fmt: skip
    save(args.work, "build", {"seconds": seconds, "sizes_mib": sizes})
    if chat_waits:
        raise RuntimeError(
            "chat not built: llama.cpp is still compiling (gpu_device.sh llama-build), and chat's shape is quantised "
            "by it; after `gpu_device.sh llama-wait`, run `gpu_device.sh phase build --no-large-v3 --only chat`"
        )


def llama_compiling(work: Path) -> bool:
    """Whether the llama.cpp compile ``gpu_device.sh llama-build`` started in ``work`` is still running."""
    started = (work / "llama-build.log").exists()
    return started and not (work / "llama-built").exists() and not (work / "llama-failed").exists()
