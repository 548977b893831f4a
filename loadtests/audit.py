"""The audit table and the P50 gate: Locust's CSV report in, a pass/fail table out.

Targets are P50 latencies in milliseconds per endpoint. An endpoint passes when its P50
is at most its target, it was called at least once, and its failure ratio stays under
the allowed one. P95 is reported beside P50 (and against the same target, as a ratio)
but does not gate: the audit table states medians.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

# The product's audit table: P50 targets in milliseconds.
AUDIT_TARGETS_MS: dict[str, float] = {"health": 10, "tts": 120, "stt": 237, "chat": 2300, "translate": 130}
ENDPOINTS = tuple(AUDIT_TARGETS_MS)


@dataclass(frozen=True)
class EndpointStats:
    name: str
    requests: int
    failures: int
    p50_ms: float
    p95_ms: float
    rps: float

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Verdict:
    endpoint: str
    target_ms: float
    stats: EndpointStats | None
    passed: bool
    reason: str

    @property
    def ratio(self) -> float | None:
        return self.stats.p50_ms / self.target_ms if self.stats and self.stats.requests else None


def parse_targets(text: str | None) -> dict[str, float]:
    """``"tts=120,stt=237"`` over the audit table; an empty or missing text keeps the table."""
    targets = dict(AUDIT_TARGETS_MS)
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in AUDIT_TARGETS_MS:
            raise ValueError(f"target {item!r}: expected NAME=MS with NAME one of {', '.join(AUDIT_TARGETS_MS)}")
        targets[name.strip()] = float(value)
    return targets


def read_locust_stats(path: Path) -> dict[str, EndpointStats]:
    """Rows of Locust's ``<prefix>_stats.csv`` by request name (the Aggregated row is left out)."""
    stats = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["Name"] == "Aggregated":
                continue
            stats[row["Name"]] = EndpointStats(
                name=row["Name"],
                requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                p50_ms=_ms(row["50%"]),
                p95_ms=_ms(row["95%"]),
                rps=float(row["Requests/s"]),
            )
    return stats


def _ms(value: str) -> float:
    # Locust writes "N/A" for a percentile of an endpoint with no successful request.
    return float(value) if value not in ("", "N/A") else float("nan")


def gate(stats: dict[str, EndpointStats], targets: dict[str, float], max_failure_ratio: float = 0.01) -> list[Verdict]:
    verdicts = []
    for endpoint, target in targets.items():
        row = stats.get(endpoint)
        if row is None or row.requests == 0:
            verdicts.append(Verdict(endpoint, target, row, False, "no request completed"))
        elif row.failure_ratio > max_failure_ratio:
            verdicts.append(Verdict(endpoint, target, row, False, f"{row.failure_ratio:.1%} of requests failed"))
        elif not row.p50_ms <= target:  # also fails on NaN
            verdicts.append(Verdict(endpoint, target, row, False, f"P50 {row.p50_ms:.0f} ms over {target:.0f} ms"))
        else:
            verdicts.append(Verdict(endpoint, target, row, True, "ok"))
    return verdicts


def format_table(verdicts: list[Verdict]) -> str:
    lines = [
        "| endpoint | requests | failures | P50 ms | P95 ms | target ms | P50/target | P95/target | result |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for v in verdicts:
        s = v.stats
        if s is None or s.requests == 0:
            lines.append(f"| {v.endpoint} | 0 | 0 | - | - | {v.target_ms:.0f} | - | - | FAIL ({v.reason}) |")
            continue
        result = "pass" if v.passed else f"FAIL ({v.reason})"
        lines.append(
            f"| {v.endpoint} | {s.requests} | {s.failures} | {s.p50_ms:.0f} | {s.p95_ms:.0f} | {v.target_ms:.0f} "
            f"| {s.p50_ms / v.target_ms:.2f} | {s.p95_ms / v.target_ms:.2f} | {result} |"
        )
    return "\n".join(lines)
