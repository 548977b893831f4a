"""Weights are known by their content: the hash stored beside them, kept current, and a pull of new
weights that replaces the old folder whole (the hub stood in for by a local one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from milo_voice.registry import Registry
from milo_voice.weights import identity
from milo_voice.weights.production import WeightsUnavailableError, pull_model
from tests.conftest import REPO


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_the_revision_is_a_hash_of_names_and_bytes(tmp_path: Path) -> None:
    a = identity.compute(_folder(tmp_path / "a", {"model.bin": b"weights", "sub/vocab.json": b"{}"}))
    same = identity.compute(_folder(tmp_path / "b", {"model.bin": b"weights", "sub/vocab.json": b"{}"}))
    other_bytes = identity.compute(_folder(tmp_path / "c", {"model.bin": b"weightz", "sub/vocab.json": b"{}"}))
    other_name = identity.compute(_folder(tmp_path / "d", {"model2.bin": b"weights", "sub/vocab.json": b"{}"}))
    assert a.sha256 == same.sha256 and a.revision.startswith("sha256:") and len(a.revision) == 23
    assert len({a.sha256, other_bytes.sha256, other_name.sha256}) == 3
    assert (a.files, a.bytes) == (2, 9)
    with pytest.raises(FileNotFoundError, match="no weights"):
        identity.compute(_folder(tmp_path / "e", {".complete": b"main"}))


def test_a_stored_identity_is_read_back_until_the_files_change(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"model.bin": b"one"})
    assert identity.stored_revision(folder) is None
    written = identity.write(folder)
    (folder / ".complete").write_text("main")  # bookkeeping is not weights
    assert identity.read(folder) == written
    assert identity.stored_revision(folder) == written.revision
    (folder / "model.bin").write_bytes(b"fine-tuned")  # weights copied over by hand
    changed = identity.read(folder)
    assert changed.revision != written.revision
    assert identity.stored_revision(folder) == changed.revision  # stored again


def test_weights_mounted_read_only_are_hashed_without_storing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _folder(tmp_path, {"model.bin": b"one"})
    original = Path.write_text

    def read_only(path: Path, *args: object, **kwargs: object) -> int:
        if path.name == identity.IDENTITY_FILE:
            raise PermissionError(13, "Read-only file system", str(path))
        return original(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", read_only)
    expected = identity.compute(folder).revision
    hashed = []
    compute = identity.compute
    monkeypatch.setattr(identity, "compute", lambda f: hashed.append(f) or compute(f))
    assert identity.read(folder).revision == expected
    assert identity.stored_revision(folder) is None
    assert identity.read(folder).revision == expected and len(hashed) == 1  # hashed once per process


class LocalHub:
    """A hub on disk: ``repos[repo]`` is the files a snapshot of it holds now."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.offline = False

    def snapshot(self, repo: str, revision: str, target: Path, patterns: list[str]) -> Path:
        if self.offline:
            raise WeightsUnavailableError(f"offline: {repo}")
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.iterdir():  # what the hub client's local folder holds after a fetch
            stale.unlink()
        return _folder(target, self.repos[repo])

    def file(self, repo: str, filename: str, revision: str, target: Path) -> Path:
        raise AssertionError("not used here")


def test_a_pull_of_new_weights_replaces_the_old_folder_whole(registry: Registry, tmp_path: Path) -> None:
    spec = registry["stt"]
    repo = spec.weights("production").source.removeprefix("hf:")
    hub = LocalHub()
    hub.repos[repo] = {"model.bin": b"v1", "config.json": b"{}", "old_only.json": b"{}"}
    target = pull_model(spec, tmp_path, hub)
    first = identity.read(target)
    assert sorted(p.name for p in target.iterdir()) == [".complete", identity.IDENTITY_FILE, "config.json",
                                                         "model.bin", "old_only.json"]  # fmt: skip
    # The same registry label ("main") now holds other weights: a plain pull keeps what is there ...
    hub.repos[repo] = {"model.bin": b"v2", "config.json": b"{}"}
    assert pull_model(spec, tmp_path, hub) == target and identity.read(target) == first
    # ... a forced one brings them, and nothing of the old weights stays.
    pull_model(spec, tmp_path, hub, force=True)
    second = identity.read(target)
    assert second.revision != first.revision
    assert (target / "model.bin").read_bytes() == b"v2" and not (target / "old_only.json").exists()
    assert sorted(p.name for p in (tmp_path / "production").iterdir()) == ["stt"]  # no staging left
    # A pull that fails leaves the served folder as it was.
    hub.offline = True
    with pytest.raises(WeightsUnavailableError):
        pull_model(spec, tmp_path, hub, force=True)
    assert identity.read(target) == second and (target / ".complete").exists()
    assert sorted(p.name for p in (tmp_path / "production").iterdir()) == ["stt"]


def test_models_list_shows_what_each_folder_holds(embedded_dir: Path) -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "milo_voice.cli", "models", "list"],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ), timeout=120,
    ).stdout  # fmt: skip
    for name in ("stt", "tts", "translate", "chat"):
        line = next(row for row in listing.splitlines() if row.startswith(name) and "embedded*" in row)
        assert identity.stored_revision(embedded_dir / name) in line
