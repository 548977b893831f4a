"""``python -m loadtests`` (``make loadtest``): a bounded headless Locust run, gated on the audit table.

Without ``--url`` it starts the whole stack (``milo-voice serve`` on free ports, embedded
weights) and stops it afterwards. It writes Locust's CSV and HTML reports and ``gate.md``
under ``--out``, prints the table (endpoint, P50, P95, target, ratio, pass/fail) and exits 1
when an endpoint misses its target (``--report-only`` prints the same and exits 0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadtests.audit import format_table, gate, parse_targets, read_locust_stats
from loadtests.processes import REPO
from milo_voice.local_stack import LocalStack
from milo_voice.local_stack import local_stack as serve_locally

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
SCENARIOS = {
    "mixed": ["MixedUser"],
    "all": ["HealthUser", "TtsUser", "SttUser", "TranslateUser", "ChatUser"],
    "health": ["HealthUser"],
    "tts": ["TtsUser"],
    "stt": ["SttUser"],
    "translate": ["TranslateUser"],
    "chat": ["ChatUser"],
    "voice": ["VoiceUser"],
}
# What a scenario calls, so the gate only judges endpoints the scenario exercises.
SCENARIO_ENDPOINTS = {
    "mixed": ("health", "tts", "stt", "translate", "chat"),
    "all": ("health", "tts", "stt", "translate", "chat"),
    **{name: (name,) for name in ("health", "tts", "stt", "translate", "chat")},
    "voice": (),  # no audit row: its timings are reported beside the gate (docs/voice.md)
}


# A stack started here for a load test serves one anonymous client: lift the rate limits that
# would otherwise turn the load into 429s (against a remote URL, use a token of a fitting tier).
UNLIMITED_ENV = {
    "MILO_IP_RATE_LIMIT": "1000000/minute",
    "MILO_ANONYMOUS_TIER": "loadtest",
    "MILO_TIERS": json.dumps(
        {
            "loadtest": {"priority": 2, "queue_timeout_s": 600, "limits": {"default": "1000000/minute"}},
            "premium": {"priority": 1, "queue_timeout_s": 600, "limits": {"default": "1000000/minute"}},
        }
    ),
}


def local_stack(
    log_path: Path, env: dict[str, str] | None = None, **options: Any
) -> contextlib.AbstractContextManager[LocalStack]:
    """The whole stack for a load test: ``milo_voice.local_stack`` (``options``: its ``server``,
    ``repository`` and ``facade_workers``) with the rate limits lifted."""
    return serve_locally(log_path, {**UNLIMITED_ENV, **(env or {})}, **options)


def run_locust(args: argparse.Namespace, url: str, out: Path) -> int:
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
        "--users", str(args.users), "--spawn-rate", str(args.spawn_rate), "--run-time", args.duration,
        "--stop-timeout", str(args.stop_timeout), "--csv", str(out / "locust"), "--html", str(out / "report.html"),
        "--only-summary", "--exit-code-on-error", "0", *SCENARIOS[args.scenario],
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if args.token:
        env["MILO_LOADTEST_TOKEN"] = args.token
    return subprocess.run(command, cwd=REPO, env=env).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="facade base URL; without it the stack is started here")
    parser.add_argument("--token", default=os.environ.get("MILO_LOADTEST_TOKEN", ""), help="API token")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="mixed")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--spawn-rate", type=float, default=2)
    parser.add_argument("--duration", default="60s", help="Locust run time: 30s, 2m, ...")
    parser.add_argument("--stop-timeout", type=float, default=30, help="seconds in-flight requests get to finish")
    parser.add_argument("--targets", default="", help="override P50 targets in ms: tts=120,stt=237,...")
    parser.add_argument("--max-failure-ratio", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=None, help="report folder (default loadtests/reports/<time>)")
    parser.add_argument("--report-only", action="store_true", help="print the gate but exit 0 on a miss")
    parser.add_argument("--from-csv", type=Path, help="gate an existing <prefix>_stats.csv instead of running")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    targets = parse_targets(args.targets)
    targets = {name: targets[name] for name in SCENARIO_ENDPOINTS[args.scenario]}
    if args.from_csv:
        return report(args, targets, args.from_csv, args.from_csv.parent, f"Gate of {args.from_csv}")
    out = args.out or REPO / "loadtests" / "reports" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)

    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(local_stack(out / "stack.log")).facade
        code = run_locust(args, url, out)
    if code != 0:
        print(f"error: locust exited with {code}", file=sys.stderr)
        return code
    print(f"reports: {out}/locust_stats.csv, {out}/report.html, {out}/gate.md")
    title = (
        f"Locust {args.scenario}: {args.users} users, spawn rate {args.spawn_rate}/s, {args.duration}, "
        f"against {args.url or 'a local stack'}"
    )
    return report(args, targets, out / "locust_stats.csv", out, title)


def report(args: argparse.Namespace, targets: dict[str, float], csv_path: Path, out: Path, title: str) -> int:
    verdicts = gate(read_locust_stats(csv_path), targets, args.max_failure_ratio)
    summary = f"{title}\n\n{format_table(verdicts)}\n"
    (out / "gate.md").write_text(summary)
    print(summary)
    missed = [v.endpoint for v in verdicts if not v.passed]
    if missed:
        print(f"{'missed (report only)' if args.report_only else 'FAILED'}: {', '.join(missed)}")
        return 0 if args.report_only else 1
    print("every endpoint within its audit target")
    return 0
