"""The GPU benchmark's goals, read from one lease's results: each served role at 64 clients over
its rate in process measured in the same lease, one short question through the facade, and
every row of the Locust mix over its audit target.

A goal whose figure is missing (a phase not run, a level not served, a served level without its
in-process reference) is reported as not measured, never as met: a ratio is only read where the
served phase set it beside an in-process figure of the same work folder.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtests.bench.gpu.common import result_suffix, save


@dataclass(frozen=True)
class ServedGoal:
    """A served level's figure against a bound: ``key`` of the level ``endpoint`` at ``clients``."""

    name: str
    endpoint: str
    clients: int
    key: str
    bound: float
    at_most: bool  # the figure must stay at or under the bound (a latency), not reach it (a ratio)

    @property
    def written(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.bound:g}"


SERVED_GOALS = (
    ServedGoal("STT at 64 clients, over the role's best in process", "stt", 64, "served_over_best", 0.90, False),
    ServedGoal("one short question (2.4 s), P50 ms", "stt-short", 1, "p50_ms", 40.0, True),
    ServedGoal("TTS at 64 clients, over its batched rate in process", "tts", 64, "served_over_best", 0.80, False),
    ServedGoal(
        "translation at 64 clients, over its batched rate in process", "translate", 64, "served_over_best", 0.80, False
    ),
)
# Every row of the mix at most half its target.
LOCUST_BOUND = 0.5
LOCUST_WRITTEN = f"<= {LOCUST_BOUND:g}, each row passing"


@dataclass(frozen=True)
class Outcome:
    goal: str
    bound: str
    measured: float | None
    met: bool | None  # None: not measured
    source: str
    detail: str = ""


def served_outcomes(served: dict[str, Any], source: str) -> list[Outcome]:
    """The served goals from one ``served-*.json``; a level run twice is held to its less favourable figure."""
    outcomes = []
    for goal in SERVED_GOALS:
        levels = [
            level
            for level in served.get("levels", [])
            if level["endpoint"] == goal.endpoint and level["concurrency"] == goal.clients and goal.key in level
        ]
        if not levels:
            outcomes.append(Outcome(goal.name, goal.written, None, None, source, "no such level with this figure"))
            continue
        # The least favourable of the repeated levels: a goal is met only if every run met it.
        worst = (
            max(levels, key=lambda level: level[goal.key])
            if goal.at_most
            else min(levels, key=lambda level: level[goal.key])
        )
        figure = float(worst[goal.key])
        met = figure <= goal.bound if goal.at_most else figure >= goal.bound
        detail = f"{worst['throughput_rps']} requests/s, P50 {worst['p50_ms']} ms"
        if "inprocess_best" in worst:
            detail += f"; in process {worst['inprocess_best']['rate']} at batch {worst['inprocess_best']['batch']}"
        outcomes.append(Outcome(goal.name, goal.written, figure, met, source, detail))
    return outcomes


def locust_outcome(locust: dict[str, Any], source: str) -> Outcome:
    """The mix's goal from one ``locust-*.json``: every endpoint answered, passed, and at most half its target."""
    name = "Locust mix, every row's P50 over its target" + (" (MPS)" if locust.get("mps") else "")
    verdicts = locust.get("verdicts", [])
    ratios = {
        v["endpoint"]: v["stats"]["p50_ms"] / v["target_ms"] for v in verdicts if v["stats"] and v["stats"]["requests"]
    }
    if not verdicts or len(ratios) < len(verdicts):
        return Outcome(name, LOCUST_WRITTEN, None, None, source, "an endpoint completed no request")
    highest = max(ratios, key=lambda endpoint: ratios[endpoint])
    failing = [v["endpoint"] for v in verdicts if not v["passed"]]
    met = not failing and ratios[highest] <= LOCUST_BOUND
    detail = ", ".join(f"{endpoint} {ratio:.2f}" for endpoint, ratio in ratios.items())
    if failing:
        detail += f"; not passed: {', '.join(failing)}"
    return Outcome(name, LOCUST_WRITTEN, round(ratios[highest], 3), met, source, detail)


def read_goals(results: Path, variant: str, server: str, facade_workers: int = 1) -> list[Outcome]:
    """The goals from ``results`` for a variant as served on one server; the mix with and without MPS."""
    outcomes: list[Outcome] = []
    suffix, mps_suffix = (result_suffix(server, mps, facade_workers) for mps in (False, True))
    served = results / f"served-{variant}{suffix}.json"
    if served.exists():
        outcomes += served_outcomes(json.loads(served.read_text()), served.name)
    else:
        outcomes += [Outcome(g.name, g.written, None, None, served.name, "not run") for g in SERVED_GOALS]
    mixes = [results / f"locust-{variant}{suffix}.json", results / f"locust-{variant}{mps_suffix}.json"]
    ran = [path for path in mixes if path.exists()]
    outcomes += [locust_outcome(json.loads(path.read_text()), path.name) for path in ran]
    if not ran:
        outcomes.append(Outcome("Locust mix", LOCUST_WRITTEN, None, None, mixes[0].name, "not run"))
    return outcomes


def format_goals(outcomes: list[Outcome]) -> str:
    rows = ["| goal | bound | measured | met | from | detail |", "|---|---|---:|---|---|---|"]
    for o in outcomes:
        met = "not measured" if o.met is None else ("yes" if o.met else "**no**")
        measured = "" if o.measured is None else f"{o.measured:g}"
        rows.append(f"| {o.goal} | {o.bound} | {measured} | {met} | {o.source} | {o.detail} |")
    return "\n".join(rows)


def phase_goals(args: argparse.Namespace) -> None:
    variant = args.variants.split(",")[0]
    outcomes = read_goals(args.work / "results", variant, args.server, args.facade_workers)
    table = format_goals(outcomes)
    name = f"goals-{variant}{result_suffix(args.server, facade_workers=args.facade_workers)}"
    save(args.work, name, {"goals": [asdict(o) for o in outcomes], "table": table})
    print(table, flush=True)
