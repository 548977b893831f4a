"""llama.cpp's own server, built from the source that the installed llama-cpp-python vendors.

The chat benchmark's anchor: ``llama-server --parallel N`` decodes N conversations with
continuous batching in C++. Built from the same llama.cpp commit as the library the chat role
loads, with the same portable CPU flags (or CUDA), so both run the same kernels.

    python -m loadtests.bench.llama_server build [--cuda] [--sdist FILE]   # prints the binary's path
    python -m loadtests.bench.llama_server slim OUT.tar.gz                 # the sdist without what no
                                                                           # build reads, to carry
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from pathlib import Path

from loadtests.processes import free_port, wait_ok

CACHE = Path(os.environ.get("MILO_BENCH_CACHE", Path.home() / ".cache" / "milo-voice"))
# The UI and the tools the benchmark does not use are left out; OpenSSL is not needed on loopback.
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_OPENSSL=OFF",
]  # fmt: skip


def sdist(target: Path) -> Path:
    """The sdist of the installed llama-cpp-python (downloaded once from PyPI)."""
    wanted = version("llama-cpp-python")
    found = sorted(target.glob(f"llama_cpp_python-{wanted}*.tar.gz"))
    if found:
        return found[0]
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(target),
         f"llama-cpp-python=={wanted}"],
        check=True,
    )  # fmt: skip
    return sorted(target.glob(f"llama_cpp_python-{wanted}*.tar.gz"))[0]


# Not read by a CPU or CUDA build of the library and llama-server: models, docs, tests, other backends.
SLIM_DROPS = (
    "models", "docs", "benches", "tests", "examples", "media", "gguf-py", "conversion", "ci", ".devops",
    "tools/ui/src", "tools/ui/static", "tools/ui/tests", "ggml/src/ggml-vulkan", "ggml/src/ggml-sycl",
    "ggml/src/ggml-metal", "ggml/src/ggml-cann", "ggml/src/ggml-opencl", "ggml/src/ggml-musa",
    "ggml/src/ggml-hip", "ggml/src/ggml-webgpu", "ggml/src/ggml-zdnn", "ggml/src/ggml-hexagon",
)  # fmt: skip


def slim_sdist(out: Path, source: Path | None = None) -> Path:
    """The sdist without ``SLIM_DROPS``: small enough to carry to a machine without a registry."""
    source = source or sdist(CACHE / "sdist")
    drops = ["/.git", "/examples", "/docs", "/tests", *(f"/vendor/llama.cpp/{d}" for d in SLIM_DROPS)]

    def keep(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
        path = "/" + member.name.split("/", 1)[-1]
        return None if any(path == d or path.startswith(d + "/") for d in drops) else member

    with tarfile.open(source) as original, tarfile.open(out, "w:gz") as slim:
        for member in original.getmembers():
            if keep(member) is not None:
                slim.addfile(member, original.extractfile(member) if member.isfile() else None)
    return out


def build(source: Path | None = None, cuda: bool = False, jobs: int | None = None) -> Path:
    """``llama-server`` built from ``source`` (an sdist, or the installed version's); cached."""
    source = source or sdist(CACHE / "sdist")
    out = CACHE / f"llama-server-{source.name.removesuffix('.tar.gz')}-{'cuda' if cuda else 'cpu'}"
    binary = out / "llama-server"
    if binary.exists():
        return binary
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as tmp:
        with tarfile.open(source) as archive:
            archive.extractall(tmp, filter="data")
        tree = next(Path(tmp).glob("llama_cpp_python-*")) / "vendor" / "llama.cpp"
        flags = [*CMAKE_FLAGS, *(["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=native"] if cuda else [])]
        subprocess.run(["cmake", "-S", str(tree), "-B", f"{tmp}/build", *flags], check=True)
        subprocess.run(
            ["cmake", "--build", f"{tmp}/build", "--target", "llama-server", "-j", str(jobs or os.cpu_count() or 2)],
            check=True,
        )
        out.mkdir(parents=True, exist_ok=True)
        for built in Path(f"{tmp}/build/bin").iterdir():
            if built.name == "llama-server" or ".so" in built.name:
                shutil.copy2(built, out / built.name)
    return binary


@contextlib.contextmanager
def running(
    binary: Path,
    model: Path,
    parallel: int,
    slot_context: int,
    threads: int,
    batch_tokens: int,
    gpu: bool,
    log_path: Path,
    extra: Sequence[str] = (),
) -> Iterator[str]:
    """``llama-server`` with ``parallel`` slots of ``slot_context`` tokens; yields its base URL."""
    port = free_port()
    command = [
        str(binary), "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
        "--parallel", str(parallel), "--ctx-size", str(parallel * slot_context),
        "--threads", str(threads), "--threads-batch", str(threads),
        "--batch-size", str(batch_tokens), "--ubatch-size", str(min(batch_tokens, 512)),
        "--n-gpu-layers", "999" if gpu else "0", "--no-webui", *extra,
    ]  # fmt: skip
    env = {**os.environ, "LD_LIBRARY_PATH": f"{binary.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ok(f"http://127.0.0.1:{port}/health", 600, process)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build", "slim"])
    parser.add_argument("out", type=Path, nargs="?", help="slim: the tarball to write")
    parser.add_argument("--cuda", action="store_true")
    parser.add_argument("--sdist", type=Path, help="default: the installed version's, from PyPI")
    args = parser.parse_args()
    print(build(args.sdist, args.cuda) if args.command == "build" else slim_sdist(args.out, args.sdist))


if __name__ == "__main__":
    main()
