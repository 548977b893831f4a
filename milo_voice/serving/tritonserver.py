"""Run a stock ``tritonserver`` on ``model_repository/``: the binary the nvidia-pytriton wheel ships.

The same server that NVIDIA's containers run, with the Python backend, loading the
repository's ``config.pbtxt`` files and ``1/model.py`` adapters; no PyTriton proxy in
between. The wheel keeps one Python stub per Python version; like PyTriton, this copies
the server into a work directory with the stub of the running interpreter, so that the
stub embeds the same Python (and so sees the same packages) as this process.

``python -m milo_voice.serving.tritonserver`` serves on Triton's standard ports.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from contract.triton_access import check_exposure, restriction
from milo_voice.child_processes import stop_with_parent
from milo_voice.registry import registry_path
from milo_voice.serving.cuda_mps import cuda_mps
from milo_voice.serving.shared_memory import remove_orphaned_segments
from milo_voice.settings import REPO_ROOT, server_settings


@dataclass(frozen=True)
class ServerPorts:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def wheel_server_dir() -> Path:
    """The ``tritonserver`` tree inside the installed nvidia-pytriton wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise RuntimeError("nvidia-pytriton is not installed: it carries the tritonserver binary")
    return Path(spec.origin).parent / "tritonserver"


def prepare_server(workdir: Path) -> Path:
    """A runnable copy of the wheel's server in ``workdir``, with this interpreter's Python stub."""
    source = wheel_server_dir()
    target = workdir / "tritonserver"
    if not target.exists():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("python_backend_stubs", "__pycache__"))
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = source / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise RuntimeError(f"the wheel has no Python backend stub for Python {version}")
        shutil.copy2(stub, target / "backends" / "python" / "triton_python_backend_stub")
    return target


def server_environment() -> dict[str, str]:
    """The stub must load this interpreter's libpython and find this project's packages."""
    env = dict(os.environ)
    wheel_libs = wheel_server_dir().parent.parent / "nvidia_pytriton.libs"
    library_path = [sysconfig.get_config_var("LIBDIR") or "", str(wheel_libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in library_path if p)
    # The stub finds its site-packages through the first python3 on PATH (this venv's).
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = ":".join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def server_command(
    server: Path,
    repository: Path,
    ports: ServerPorts,
    verbose: int = 0,
    bind: str = "127.0.0.1",
    key: str | None = None,
) -> list[str]:
    check_exposure(bind, key)
    restricted = [f"--http-restricted-api={restriction(key)}", f"--grpc-restricted-protocol={restriction(key)}"]
    return [
        str(server / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={server / 'backends'}",
        f"--http-address={bind}",
        f"--http-port={ports.http}",
        f"--grpc-address={bind}",
        f"--grpc-port={ports.grpc}",
        f"--metrics-port={ports.metrics}",
        "--allow-metrics=true",
        "--allow-cpu-metrics=true",
        # P50/P95/P99 per model as Prometheus summaries (nv_inference_request_summary_us, ...).
        "--metrics-config=summary_latencies=true",
        "--exit-on-error=true",
        "--strict-readiness=true",
        f"--log-verbose={verbose}",
        # Unique shared-memory names: two servers on one machine (a test beside a dev stack)
        # must not open each other's regions.
        f"--backend-config=python,shm-region-prefix-name=milo_{os.getpid()}_",
        *(restricted if key else []),
    ]


def start_server(
    ports: ServerPorts,
    repository: Path | None = None,
    workdir: Path | None = None,
    **popen: object,
) -> subprocess.Popen[bytes]:
    """``tritonserver`` in a child process (weights and profile from ``MILO_*`` as for PyTriton).

    ``repository`` defaults to the folder of the registry in use (``MILO_REGISTRY``).
    """
    repository = repository or registry_path().parent
    workdir = workdir or Path(tempfile.mkdtemp(prefix="milo-tritonserver-"))
    server = prepare_server(workdir)
    settings = server_settings()
    command = server_command(
        server, repository.resolve(), ports, settings.triton_log_verbose, settings.triton_bind, settings.triton_key
    )
    return subprocess.Popen(  # type: ignore[call-overload]
        command, env=server_environment(), preexec_fn=stop_with_parent, **popen
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--model-repository", type=Path, help="default: the folder of the registry in use")
    parser.add_argument("--workdir", type=Path, help="where the server copy goes (default: a temporary folder)")
    args = parser.parse_args()
    ports = ServerPorts(args.http_port, args.grpc_port, args.metrics_port)
    remove_orphaned_segments()
    # Without --workdir the server copy goes to a temporary folder, removed on the way out.
    with contextlib.ExitStack() as cleanup:
        workdir = args.workdir or Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="milo-tritonserver-")))
        if server_settings().cuda_mps:  # started before the server, stopped after it
            cleanup.enter_context(cuda_mps(workdir))
        process = start_server(ports, args.model_repository, workdir)
        # SIGTERM (a supervisor, a test stopping the server) stops tritonserver too, which unloads its
        # models: their Python stubs exit with it instead of running on, orphaned.
        signal.signal(signal.SIGTERM, lambda *_: process.terminate())
        try:
            code = process.wait()
        except KeyboardInterrupt:
            process.terminate()
            code = process.wait(timeout=60)
    sys.exit(code)


if __name__ == "__main__":
    main()
