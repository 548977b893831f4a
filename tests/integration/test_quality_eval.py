"""``milo-voice eval`` against the real stack (PyTriton host, facade in uvicorn), and the embedded
profile's quality gate: French said by the served voice and heard back by the served Whisper.

The gates are set from what was measured (docs/quality.md), with room for run-to-run noise: a
regression in the normaliser, the voice, Whisper's settings or the translation path fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from milo_voice.weights import identity
from tests.conftest import REPO, TritonHost, facade_process

pytestmark = pytest.mark.integration

FRENCH_TTS_STT_MAX_CER = 0.10
FRENCH_CLIPS_MAX_CER = 0.2


@pytest.fixture(scope="module")
def report(triton_host: TritonHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    out = tmp_path_factory.mktemp("eval")
    with facade_process(triton_host, out / "facade.log", MILO_ANONYMOUS_TIER="premium") as facade:
        command = [sys.executable, "-m", "milo_voice.cli", "eval", "--url", facade, "--out", str(out),
                   "--spoken-sentences", "6", "--translation-pairs", "16"]  # fmt: skip
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| tts->stt | fr | CER |" in (out / "eval.md").read_text()
    yield json.loads((out / "eval.json").read_text())


def _row(report: dict, task: str, language: str, metric: str) -> dict:
    (row,) = [r for r in report["rows"] if (r["task"], r["language"], r["metric"]) == (task, language, metric)]
    return row


def test_french_said_by_the_served_voice_is_heard_back(report: dict) -> None:
    row = _row(report, "tts->stt", "fr", "CER")
    assert row["items"] == 6
    assert row["value"] < FRENCH_TTS_STT_MAX_CER, row


def test_french_said_by_another_voice_is_transcribed(report: dict) -> None:
    row = _row(report, "stt", "fr", "CER")
    assert row["items"] == 6 and "mb-fr1" in row["detail"]
    assert row["value"] < FRENCH_CLIPS_MAX_CER, row


def test_malagasy_without_recordings_is_reported_as_not_measured(report: dict) -> None:
    row = _row(report, "stt", "mg", "WER")
    assert row["value"] is None and "--clips" in row["detail"]
    # The seeded Malagasy voice is not speech: measured, and far from right.
    assert _row(report, "tts->stt", "mg", "CER")["value"] > 0.5


def test_the_report_names_the_weights_it_measured(report: dict, embedded_dir: Path) -> None:
    assert report["stack"]["weights"]["translate"] == identity.stored_revision(embedded_dir / "translate")


def test_every_translation_direction_is_scored_with_where_it_came_from(report: dict) -> None:
    for direction in ("fr->mg", "mg->fr", "fr->mg->fr"):
        row = _row(report, "translate", direction, "chrF")
        assert row["items"] == 16
        assert 0.0 <= row["value"] <= 100.0
        counted = sum(int(part.split()[-1]) for part in row["detail"].split(", "))
        assert counted == 16, row["detail"]
    assert report["stack"]["status"] in ("ready", "degraded")
