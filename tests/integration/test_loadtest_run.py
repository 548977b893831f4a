"""A short headless Locust run of every suite against the real stack: it runs and reports.

Latency is not judged here (two CPU cores); ``make loadtest`` does that.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.audit import read_locust_stats
from tests.conftest import REPO, TritonHost, facade_process

pytestmark = pytest.mark.integration


def locust(host: TritonHost, tmp_path: Path, scenario: str, users: int, duration: str) -> str:
    """``python -m loadtests`` against a real facade; its output. The report goes to ``tmp_path/report``."""
    with facade_process(host, tmp_path / "facade.log") as url:
        result = subprocess.run(
            [sys.executable, "-m", "loadtests", "--url", url, "--scenario", scenario, "--users", str(users),
             "--spawn-rate", str(users), "--duration", duration, "--out", str(tmp_path / "report"), "--report-only"],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_short_locust_run_produces_reports(triton_host: TritonHost, tmp_path: Path) -> None:
    output = locust(triton_host, tmp_path, "all", 5, "6s")
    report = tmp_path / "report"
    assert (report / "report.html").read_text().lower().count("locust") > 0
    stats = read_locust_stats(report / "locust_stats.csv")
    # Each suite's user made its first call; health's, which waits a tenth as long between calls
    # as the models' users, the most (a count of its own depends on how busy the two cores are).
    assert {"health", "tts", "translate"} <= {name for name, row in stats.items() if row.requests > 0}
    models = [stats[name].requests for name in ("tts", "stt", "translate", "chat") if name in stats]
    assert stats["health"].requests > max(models)
    assert all(row.failures == 0 for row in stats.values())
    gate_table = (report / "gate.md").read_text()
    for endpoint in ("health", "tts", "stt", "translate", "chat"):
        assert f"| {endpoint} |" in gate_table
    assert "P50/target" in output


def test_the_voice_scenario_reports_time_to_first_audio(triton_host: TritonHost, tmp_path: Path) -> None:
    output = locust(triton_host, tmp_path, "voice", 2, "12s")
    stats = read_locust_stats(tmp_path / "report" / "locust_stats.csv")
    # What the run said, should a turn go missing again (seen once in many runs: both turns were
    # answered 200, and neither reply ended within the run and Locust's stop timeout).
    said = f"{output[-2000:]}\n--- facade log ---\n{(tmp_path / 'facade.log').read_text()[-6000:]}"
    assert {"voice first audio", "voice last audio"} <= stats.keys(), said
    first, last = stats["voice first audio"], stats["voice last audio"]
    assert first.requests == last.requests > 0 and stats["voice"].failures == 0, said
    assert 0 < first.p50_ms <= last.p50_ms
