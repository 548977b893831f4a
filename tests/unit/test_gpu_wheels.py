"""The GPU machine's wheel folders: what is pinned, and folders that a device call can carry."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from loadtests.bench.gpu.wheels import FIXED, pack, pins


def test_pins_are_this_environments_versions_but_numpy_and_scipy() -> None:
    pinned = dict(pin.split("==") for pin in pins(("numpy", "scipy", "fastapi", "nvidia-pytriton")))
    assert pinned["numpy"] == FIXED["numpy"] == "1.26.4"  # PyTriton 0.7 answers empty tensors under NumPy 2
    assert pinned["scipy"] == FIXED["scipy"]
    assert pinned["fastapi"] == importlib.metadata.version("fastapi")
    assert pinned["nvidia-pytriton"] == importlib.metadata.version("nvidia-pytriton")


def test_files_are_packed_into_folders_under_the_limit(tmp_path: Path) -> None:
    sizes = [50, 40, 30, 20, 10, 5, 5]
    files = []
    for i, size in enumerate(sizes):
        files.append(tmp_path / f"{i}.whl")
        files[-1].write_bytes(b"x" * size)
    folders = pack(files, limit=60)
    assert sorted(p.name for folder in folders for p in folder) == sorted(p.name for p in files)
    assert all(sum(p.stat().st_size for p in folder) <= 60 for folder in folders)
    assert len(folders) == 3  # 160 bytes: three folders of 60 at least, and first-fit needs no more
    (tmp_path / "big.whl").write_bytes(b"x" * 61)
    with pytest.raises(SystemExit, match="larger than a device call carries"):
        pack([tmp_path / "big.whl"], limit=60)
