"""Phase ``tune``: batch sizes and instance counts picked from the in-process curves."""

from __future__ import annotations

import argparse
import json
from typing import Any

from loadtests.bench.gpu.common import save


def knee(curve: dict[int, float], share: float = 0.9) -> int:
    """The smallest batch size (or instance count) reaching ``share`` of the best throughput.

    ``curve`` maps it to requests (or tokens) per second. Past the knee a larger batch buys
    little throughput. A large maximum costs a lone request nothing (Triton's batcher does
    not wait for a full batch, only ``max_queue_delay_us``), so the knee, not a latency
    budget, is what bounds it: under a queue, one batch of N beats N runs of one.
    """
    best = max(curve.values())
    return min(size for size, rate in curve.items() if rate >= share * best)


def _preferred(max_batch: int) -> list[int]:
    return [b for b in (max_batch // 4, max_batch // 2, max_batch) if b >= 2] or [max_batch]


def phase_tune(args: argparse.Namespace) -> None:
    """Batch sizes and instance counts from the in-process curves, as a tuned registry."""
    data = json.loads((args.work / "results" / "inprocess.json").read_text())
    tuned: dict[str, dict[str, Any]] = {}
    reasons: dict[str, str] = {}
    stt = data.get("stt", {}).get("large-v3-turbo", {})
    if "batch1" in stt:
        # The role as a GPU host runs it by default: encoder and decoder in torch (older runs: less).
        key = next(
            k for k in ("role_torch_clips_s", "role_torch_encoder_clips_s", "role_clips_s") if k in stt["batch1"]
        )
        curve = {b: stt[f"batch{b}"][key] for b in (1, 8, 32)}
        tuned["stt"] = {"max_batch_size": knee(curve), "instances": 1}
        reasons["stt"] = f"clips/s by batch {curve}"
    for name in ("tts", "translate"):
        batches = data.get(name, {}).get("batches")
        if batches:
            curve = {int(b): row["requests_s"] for b, row in batches.items()}
            tuned[name] = {"max_batch_size": knee(curve), "instances": 1}
            reasons[name] = f"requests/s by batch {curve}"
    # Chat batches in the role (continuous batching): its slots are measured by bench/chat_batching.py.
    for change in tuned.values():
        change["preferred_batch_sizes"] = _preferred(change["max_batch_size"])
    save(args.work, "tune", {"tuned": tuned, "reasons": reasons})
