"""The GPU benchmark's goals read from leases' own results (docs/benchmarks/gpu/)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from loadtests.bench.gpu.common import REPO
from loadtests.bench.gpu.goals import Outcome, locust_outcome, read_goals, served_outcomes

LEASES = REPO / "docs" / "benchmarks" / "gpu"


def by_goal(outcomes: list[Outcome]) -> dict[str, Outcome]:
    return {o.goal.split(",")[0]: o for o in outcomes}


def test_a_lease_that_served_every_role_is_read_against_its_own_in_process_rates() -> None:
    # 2026-12-01, third session: STT and TTS met their goals, translation (dynamic batcher) did not.
    source = LEASES / "h200-2026-12-01c/served/served-configured-tritonserver.json"
    goals = by_goal(served_outcomes(json.loads(source.read_text()), source.name))
    stt, short = goals["STT at 64 clients"], goals["one short question (2.4 s)"]
    tts, translation = goals["TTS at 64 clients"], goals["translation at 64 clients"]
    assert (stt.measured, stt.met) == (0.926, True) and "112.3 at batch 32" in stt.detail
    assert (short.measured, short.met) == (35.7, True)
    assert (tts.measured, tts.met) == (0.914, True)
    assert (translation.measured, translation.met) == (0.591, False)


def test_a_level_served_twice_is_held_to_its_lower_figure_and_a_role_not_served_is_not_measured() -> None:
    source = LEASES / "h200-2026-12-02f/2-served/served-translate-steps-tritonserver.json"
    goals = by_goal(served_outcomes(json.loads(source.read_text()), source.name))
    assert (goals["translation at 64 clients"].measured, goals["translation at 64 clients"].met) == (0.827, True)
    assert goals["STT at 64 clients"].met is None and goals["STT at 64 clients"].measured is None


def test_the_mix_is_met_only_when_every_row_is_at_most_half_its_target() -> None:
    met = LEASES / "h200-2026-12-02g/2-locust/locust-configured-tritonserver.json"
    outcome = locust_outcome(json.loads(met.read_text()), met.name)
    assert (outcome.measured, outcome.met) == (0.425, True)  # TTS 51 ms of 120
    missed = LEASES / "h200-2026-12-02f/3-locust/locust-translate-steps-tritonserver.json"
    outcome = locust_outcome(json.loads(missed.read_text()), missed.name)
    assert outcome.met is False and outcome.measured > 0.5 and "tts 0.53" in outcome.detail


def test_the_goals_phase_reads_one_work_folder_and_says_what_was_not_run(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(LEASES / "h200-2026-12-02g/3-locust/locust-tts-q1-tritonserver-mps.json",
                results / "locust-configured-tritonserver-mps.json")  # fmt: skip
    outcomes = read_goals(results, "configured", "tritonserver")
    assert [o.met for o in outcomes[:4]] == [None] * 4 and all(o.detail == "not run" for o in outcomes[:4])
    assert outcomes[4].goal.endswith("(MPS)") and outcomes[4].met is True

    command = [sys.executable, "-m", "loadtests.bench.gpu", "goals", "--work", str(tmp_path),
               "--server", "tritonserver", "--variants", "configured", "--facade-workers", "1"]  # fmt: skip
    printed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "| Locust mix, every row's P50 over its target (MPS) | <= 0.5, each row passing | 0.485 | yes |" in printed
    saved = json.loads((results / "goals-configured-tritonserver.json").read_text())
    assert [g["met"] for g in saved["goals"]] == [None, None, None, None, True]
    assert "| STT at 64 clients, over the role's best in process | >= 0.9 |  | not measured |" in printed


def test_by_default_the_goals_are_read_as_the_facade_s_image_runs_it_through_two_processes(tmp_path: Path) -> None:
    # 2026-12-03, third lease: every goal met in one lease, the facade in two processes.
    lease = LEASES / "h200-2026-12-03d"
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(lease / "2-served-w2/served-configured-tritonserver-w2.json", results)
    shutil.copy(lease / "3-mix-goals-and-one-worker/locust-configured-tritonserver-w2.json", results)
    # A one-process run of the same variant lies beside them and is not what the defaults read.
    shutil.copy(lease / "3-mix-goals-and-one-worker/served-configured-tritonserver.json", results)
    command = [sys.executable, "-m", "loadtests.bench.gpu", "goals", "--work", str(tmp_path),
               "--server", "tritonserver", "--variants", "configured"]  # fmt: skip
    subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    saved = json.loads((results / "goals-configured-tritonserver-w2.json").read_text())
    assert [(g["measured"], g["met"]) for g in saved["goals"]] == [
        (0.935, True), (36.4, True), (0.978, True), (1.057, True), (0.477, True),
    ]  # fmt: skip
    assert {g["source"] for g in saved["goals"]} == {
        "served-configured-tritonserver-w2.json", "locust-configured-tritonserver-w2.json",
    }  # fmt: skip
