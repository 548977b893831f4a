"""What weights a model folder holds: a content hash of its files, not the registry's label.

The registry's ``revision`` names what to download ("main", a tag); two pulls of "main" may bring
different weights, and fine-tuned weights copied into a folder have no label at all. So the
revision the stack serves under (the translation cache's key, ``/ready``, ``models list``, the
metrics) is a SHA-256 over every file's relative path and bytes, computed once when weights are
pulled or built and stored beside them (``IDENTITY_FILE``), with each file's size and modification
time: a folder whose files changed since is hashed again when it is next read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

IDENTITY_FILE = ".identity.json"
# Bookkeeping of the stack's own, not weights.
NOT_WEIGHTS = {IDENTITY_FILE, ".complete"}
CHUNK = 1 << 20
# Identities this process already hashed: a folder mounted read-only, where none can be stored,
# is hashed once, not by every role and metric that asks.
_HASHED: dict[Path, WeightsIdentity] = {}


@dataclass(frozen=True)
class WeightsIdentity:
    sha256: str  # hex, over every file's relative path and bytes, in path order
    files: int
    bytes: int
    stats: dict[str, list[int]]  # relative path -> [size, mtime_ns], to see a folder change

    @property
    def revision(self) -> str:
        """Short enough for a label, long enough never to collide between two weights."""
        return f"sha256:{self.sha256[:16]}"


def _weight_files(folder: Path) -> list[Path]:
    files = [p for p in folder.rglob("*") if p.is_file() and p.name not in NOT_WEIGHTS]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _stats(folder: Path, files: list[Path]) -> dict[str, list[int]]:
    return {p.relative_to(folder).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns] for p in files}


def compute(folder: Path) -> WeightsIdentity:
    files = _weight_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder} holds no weights")
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(folder).as_posix().encode()
        digest.update(len(name).to_bytes(8, "big") + name + path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    stats = _stats(folder, files)
    return WeightsIdentity(digest.hexdigest(), len(files), sum(size for size, _ in stats.values()), stats)


def write(folder: Path) -> WeightsIdentity:
    """Hash ``folder``'s weights and store the result beside them (where the folder is writable:
    weights mounted read-only are hashed each time they are read)."""
    identity = compute(folder)
    with contextlib.suppress(OSError):
        (folder / IDENTITY_FILE).write_text(json.dumps(asdict(identity), indent=1) + "\n")
    return identity


def _stored(folder: Path) -> WeightsIdentity | None:
    try:
        return WeightsIdentity(**json.loads((folder / IDENTITY_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def read(folder: Path) -> WeightsIdentity:
    """The stored identity, hashed again (and stored) if the files changed since or none is stored."""
    stats = _stats(folder, _weight_files(folder))
    for known in (_stored(folder), _HASHED.get(folder)):
        if known is not None and known.stats == stats:
            return known
    identity = _HASHED[folder] = write(folder)
    return identity


def stored_revision(folder: Path) -> str | None:
    """The stored identity's revision, without hashing anything (``None`` if none is stored)."""
    stored = _stored(folder)
    return stored.revision if stored is not None else None
