"""Phase ``build``: the production shapes with seeded weights (``loadtests.bench.shapes``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from loadtests.bench.gpu.common import save


def phase_build(args: argparse.Namespace) -> None:
    from loadtests.bench import shapes

    assets = Path(args.assets)
    seconds = shapes.build_all(
        args.work / "models", "large-v3-turbo", assets / "whisper-tokenizer.json",
        assets / "chat-tokenizer.json", "cuda", [x for x in args.only.split(",") if x],
    )  # fmt: skip
    if (not args.only or "stt" in args.only.split(",")) and not args.no_large_v3:
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
