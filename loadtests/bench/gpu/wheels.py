"""The wheels the GPU benchmark needs on the lent machine, downloaded here into folders it can carry.

``python -m loadtests.bench.gpu.wheels [--out .gpu-wheels] [--python-version 3.12]``

The lent machine has no package registry; its image brings CPython (3.12), torch, transformers and
CUDA, and each call carries at most 64 MiB. This downloads, for that interpreter and manylinux,
exactly the versions this project's virtual environment runs (the facade, the clients, Locust),
NumPy 1.26.4 (PyTriton 0.7 answers empty tensors under NumPy 2) and SciPy 1.14.1 (the image's
SciPy does not load under NumPy 1.26, and transformers then fails with a misleading error), plus
llama-cpp-python's slim sdist, and py-spy (to profile a model's process there). The files are
packed into numbered folders, the largest first, each small enough to travel with the working tree
(``folder_limit``); ``MANIFEST.txt`` lists the device commands, one call per folder, carrying that
folder (the ``llama-build`` line goes in its folder's call):

    bash loadtests/bench/gpu_device.sh install .gpu-wheels/01
    ...

Nothing here runs on the GPU machine; it only needs pip and the network of this one.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

CALL_LIMIT = 64 * 1024 * 1024  # what a device call carries: the working tree and the carried folder
MARGIN = 4 * 1024 * 1024  # room for the results a session adds to the tree before its last call
# Pinned whatever this environment has (see the module's docstring); py-spy is a tool of the lent
# machine only, which `make setup` does not install here.
FIXED = {"numpy": "1.26.4", "scipy": "1.14.1", "py-spy": "0.4.3"}
# What the image lacks: the serving stack, the facade, the clients, the benchmark's tools.
PACKAGES = (
    "nvidia-pytriton", "ctranslate2", "faster-whisper", "av", "onnxruntime", "numpy", "scipy",
    "tritonclient", "pyzmq", "sh", "python-rapidjson", "geventhttpclient", "gevent", "greenlet",
    "zope.event", "zope.interface", "brotli", "diskcache", "fastapi", "starlette", "pydantic",
    "pydantic-core", "annotated-types", "typing-inspection", "pydantic-settings", "python-dotenv",
    "uvicorn", "python-multipart", "redis", "limits", "Deprecated", "soundfile", "cffi", "pycparser",
    "gguf", "tomli-w", "opentelemetry-api", "importlib-metadata", "websockets", "flatbuffers",
    "prometheus-client", "httpx", "httpcore", "anyio", "sniffio", "h11", "idna", "certifi", "psutil",
    "locust", "flask", "flask-cors", "flask-login", "werkzeug", "jinja2", "markupsafe", "itsdangerous",
    "blinker", "click", "configargparse", "msgpack", "python-engineio", "python-socketio",
    "simple-websocket", "wsproto", "bidict", "requests", "urllib3", "charset-normalizer", "fastapi-offline",
    "uvloop", "py-spy",
)  # fmt: skip
PLATFORMS = ("manylinux_2_35_x86_64", "manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


def pins(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """``name==version`` for each package: FIXED, else the version installed here."""
    out = []
    for name in packages:
        version = FIXED.get(name)
        if version is None:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                raise SystemExit(f"{name} is not installed here: run `make setup` first, or pin it in FIXED") from None
        out.append(f"{name}=={version}")
    return out


def download(requirements: list[str], into: Path, python_version: str) -> None:
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", python_version, "--implementation", "cp", *platforms,
               "--dest", str(into), *requirements]  # fmt: skip
    subprocess.run(command, check=True)


def folder_limit(repo: Path) -> int:
    """A call's 64 MiB, less the working tree that travels with every call (tracked files)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    tree = sum((repo / name).stat().st_size for name in listed.decode().split("\0") if (repo / name).is_file())
    return CALL_LIMIT - tree - MARGIN


def pack(files: list[Path], limit: int) -> list[list[Path]]:
    """Files into as few folders of at most ``limit`` bytes as first-fit of the largest first gives."""
    folders: list[list[Path]] = []
    room: list[int] = []
    for path in sorted(files, key=lambda p: p.stat().st_size, reverse=True):
        size = path.stat().st_size
        if size > limit:
            raise SystemExit(f"{path.name} ({size >> 20} MiB) is larger than a device call carries")
        slot = next((i for i, left in enumerate(room) if left >= size), None)
        if slot is None:
            folders.append([])
            room.append(limit)
            slot = len(folders) - 1
        folders[slot].append(path)
        room[slot] -= size
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".gpu-wheels"))
    parser.add_argument("--python-version", default="3.12", help="the lent machine's CPython")
    args = parser.parse_args(argv)
    staging = args.out / "downloads"
    staging.mkdir(parents=True, exist_ok=True)
    download(pins(), staging, args.python_version)
    sdist = staging / "llama_cpp_python-slim.tar.gz"
    if not sdist.exists():
        subprocess.run([sys.executable, "-m", "loadtests.bench.llama_server", "slim", str(sdist)], check=True)
    # The folder with the sdist goes last: llama.cpp's background build runs once the rest is in.
    limit = folder_limit(Path(__file__).resolve().parents[3])
    print(f"folders of at most {limit / (1 << 20):.1f} MiB (a call carries the working tree too)")
    folders = sorted(pack(sorted(staging.iterdir()), limit), key=lambda files: sdist in files)
    for stale in args.out.glob("[0-9][0-9]"):
        shutil.rmtree(stale)
    lines = []
    for number, files in enumerate(folders, start=1):
        folder = args.out / f"{number:02d}"
        folder.mkdir()
        for path in files:
            shutil.copy2(path, folder / path.name)
        megabytes = sum(p.stat().st_size for p in files) / (1 << 20)
        lines.append(f"bash loadtests/bench/gpu_device.sh install {folder}   # {len(files)} files, {megabytes:.0f} MiB")
        if sdist in files:  # installed from the same call, while its folder is there
            lines.append(f"bash loadtests/bench/gpu_device.sh llama-build {folder / sdist.name}")
    (args.out / "MANIFEST.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
