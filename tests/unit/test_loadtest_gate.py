"""The Locust report parser and the P50 gate against the audit table."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from loadtests.audit import AUDIT_TARGETS_MS, format_table, gate, parse_targets, read_locust_stats
from loadtests.runner import main

HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
    "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)


def write_report(path: Path, rows: dict[str, tuple[int, int, str, str]]) -> Path:
    """A ``locust_stats.csv`` as Locust writes it: name -> (requests, failures, P50, P95)."""
    lines = [HEADER]
    for name, (requests, failures, p50, p95) in rows.items():
        lines.append(f"POST,{name},{requests},{failures},{p50},1,1,1,1,1.5,0.0,{p50},1,1,1,1,{p95},1,1,1,1,1")
    lines.append(",Aggregated,0,0,1,1,1,1,1,1,0,1,1,1,1,1,1,1,1,1,1,1")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_audit_table_is_the_default() -> None:
    assert AUDIT_TARGETS_MS == {"health": 10, "tts": 120, "stt": 237, "chat": 2300, "translate": 130}
    assert parse_targets(None) == AUDIT_TARGETS_MS
    assert parse_targets("tts=80, chat=1500")["tts"] == 80
    assert parse_targets("tts=80")["stt"] == 237
    for bad in ("tts", "dance=3", "tts=fast"):
        with pytest.raises(ValueError):
            parse_targets(bad)


def test_reads_locust_rows_without_the_aggregate(tmp_path: Path) -> None:
    stats = read_locust_stats(
        write_report(tmp_path / "s.csv", {"tts": (40, 1, "110", "240"), "stt": (0, 0, "N/A", "N/A")})
    )
    assert set(stats) == {"tts", "stt"}
    assert (stats["tts"].requests, stats["tts"].failures, stats["tts"].p50_ms, stats["tts"].p95_ms) == (40, 1, 110, 240)
    assert stats["tts"].failure_ratio == 1 / 40 and stats["tts"].rps == 1.5
    assert math.isnan(stats["stt"].p50_ms)


def test_gate_passes_within_targets_and_fails_each_kind_of_miss(tmp_path: Path) -> None:
    rows = {
        "health": (500, 0, "4", "9"),
        "tts": (40, 0, "130", "300"),  # over 120
        "stt": (10, 0, "200", "400"),
        "translate": (100, 5, "20", "40"),  # 5 % failed
        # chat: absent, never completed
    }
    verdicts = {
        v.endpoint: v for v in gate(read_locust_stats(write_report(tmp_path / "s.csv", rows)), AUDIT_TARGETS_MS)
    }
    assert verdicts["health"].passed and verdicts["stt"].passed
    assert not verdicts["tts"].passed and "P50 130 ms over 120 ms" in verdicts["tts"].reason
    assert verdicts["tts"].ratio == pytest.approx(130 / 120)
    assert not verdicts["translate"].passed and "failed" in verdicts["translate"].reason
    assert not verdicts["chat"].passed and verdicts["chat"].reason == "no request completed"
    table = format_table(list(verdicts.values()))
    assert "| tts | 40 | 0 | 130 | 300 | 120 | 1.08 | 2.50 | FAIL" in table
    assert "| health | 500 | 0 | 4 | 9 | 10 | 0.40 | 0.90 | pass |" in table


def test_command_exits_non_zero_on_a_miss_and_zero_when_report_only(tmp_path: Path) -> None:
    report = write_report(tmp_path / "s.csv", {"translate": (10, 0, "150", "200")})
    assert main(["--from-csv", str(report), "--scenario", "translate"]) == 1
    assert main(["--from-csv", str(report), "--scenario", "translate", "--report-only"]) == 0
    assert main(["--from-csv", str(report), "--scenario", "translate", "--targets", "translate=200"]) == 0
    assert "| translate | 10 | 0 | 150 |" in (tmp_path / "gate.md").read_text()
