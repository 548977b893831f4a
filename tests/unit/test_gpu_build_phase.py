"""The GPU benchmark's build phase beside llama.cpp's compile: chat's shape is quantised by the
library the compile makes, so while it runs the others are built and chat is left, said at once."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from loadtests.bench import shapes
from loadtests.bench.gpu.build import llama_compiling, phase_build


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The models each call of the builder was asked for (the shapes themselves are tested with the roles)."""
    calls: list[list[str]] = []

    def build_all(models_dir: Path, *args: Any) -> dict[str, float]:
        models = list(args[-1])
        calls.append(models)
        return dict.fromkeys(models, 1.0)

    monkeypatch.setattr(shapes, "build_all", build_all)
    return calls


def _args(work: Path, only: str) -> argparse.Namespace:
    return argparse.Namespace(work=work, assets=str(work), only=only, no_large_v3=True)


def test_while_llama_cpp_compiles_chat_is_left_and_said(tmp_path: Path, built: list[list[str]]) -> None:
    (tmp_path / "llama-build.log").write_text("[ 42%] Building CXX object\n")
    assert llama_compiling(tmp_path)
    with pytest.raises(RuntimeError, match="llama-wait"):
        phase_build(_args(tmp_path, "translate,chat"))
    assert built == [["translate"]]
    # What was built is saved before the error.
    assert json.loads((tmp_path / "results" / "build.json").read_text())["seconds"] == {"translate": 1.0}
    with pytest.raises(RuntimeError, match="--only chat"):
        phase_build(_args(tmp_path, "chat"))
    assert built == [["translate"]]  # chat alone: nothing built


def test_once_llama_cpp_is_built_or_never_started_everything_is_built(tmp_path: Path, built: list[list[str]]) -> None:
    assert not llama_compiling(tmp_path)  # no compile started here
    phase_build(_args(tmp_path, ""))
    assert built == [list(shapes.MODELS)]
    (tmp_path / "llama-build.log").write_text("[100%] Built target llama-server\n")
    (tmp_path / "llama-built").write_text("")
    assert not llama_compiling(tmp_path)
    phase_build(_args(tmp_path, "chat"))
    assert built[-1] == ["chat"]
