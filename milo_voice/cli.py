"""``milo-voice``: serve the stack, manage weights, and show how text will be spoken.

milo-voice serve                     PyTriton host (8000/8001/8002) and the facade (8080)
milo-voice models pull [--profile]   build the embedded weights or fetch the production ones
milo-voice models list               each model with its weights and whether they are present
milo-voice normalize --lang mg TEXT  the spoken form that TTS will read
milo-voice eval [--url URL]          quality report (TTS -> STT, STT, translation chrF) of a stack
milo-voice tokens create|list|rotate|revoke   API tokens of the facade
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from milo_voice.registry import PROFILES, Registry, active_profile, load_registry, models_dir, registry_path
from milo_voice.settings import REPO_ROOT
from milo_voice.supervisor import Child, Supervisor, accepts_connections, answers_200
from milo_voice.text.normalize import SUPPORTED_LANGUAGES, normalize_text

# Entry points of this group are functions that add subcommands to ``milo-voice``.
COMMAND_PLUGINS = "milo_voice.commands"


def _pull(args: argparse.Namespace) -> int:
    registry = load_registry()
    root = models_dir()
    if args.profile == "embedded":
        from milo_voice.weights.embedded import build_embedded

        built = build_embedded(registry, root, force=args.force)
        print(f"embedded weights ready in {root / 'embedded'} (built: {', '.join(built) or 'none, all present'})")
        return 0
    from milo_voice.weights.production import WeightsUnavailableError, pull_production

    try:
        paths = pull_production(registry, root, args.models or None, force=args.force)
    except WeightsUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"ready: {path}")
    return 0


def _list(_args: argparse.Namespace) -> int:
    from milo_voice.weights.identity import stored_revision

    registry = load_registry()
    root = models_dir()
    current = active_profile()
    print(
        f"{'model':<10} {'role':<10} {'profile':<11} {'present':<8} {'revision':<24} {'batch':>5} {'inst':>4}  source"
    )
    for spec in registry.models.values():
        for profile in PROFILES:
            weights = spec.weights(profile)
            folder = spec.path(profile, root)
            present = (folder / ".complete").exists()
            # What the folder holds (its content hash), else the registry's label of what to fetch.
            revision = (stored_revision(folder) if present else None) or f"({weights.revision})"
            marker = "*" if profile == current else " "
            print(
                f"{spec.name:<10} {spec.role:<10} {profile + marker:<11} {'yes' if present else 'no':<8} "
                f"{revision:<24} {spec.batching.max_batch_size:>5} {spec.instances.count:>4}  "
                f"{weights.source} ({weights.architecture})"
            )
    print("* active profile (MILO_PROFILE)")
    return 0


def _normalize(args: argparse.Namespace) -> int:
    print(normalize_text(" ".join(args.text), args.lang))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import contextlib

    from milo_voice.local_stack import local_stack
    from milo_voice.quality.eval_set import load_clips, load_eval_set
    from milo_voice.quality.evaluation import EvalOptions, FacadeCaller, evaluate

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would drown the report
    options = EvalOptions(spoken_sentences=args.spoken_sentences, translation_pairs=args.translation_pairs)
    clips = load_clips(Path(args.clips)) if args.clips else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:  # this machine's stack on the active profile, started for the report
            url = stack.enter_context(local_stack(out / "stack.log", {"MILO_ANONYMOUS_TIER": "premium"})).facade
        caller = FacadeCaller(url, args.token)
        stack.callback(caller.close)
        report = evaluate(caller, load_eval_set(), options, clips)
    (out / "eval.json").write_text(report.to_json() + "\n")
    (out / "eval.md").write_text(report.to_markdown())
    print(report.to_markdown())
    return 0


def _triton_configs(args: argparse.Namespace) -> int:
    from milo_voice.triton_repository import stale_configs, write_configs

    # The registry in use (MILO_REGISTRY in an image), its repository beside it unless --out.
    source = registry_path()
    registry = load_registry(source)
    root = Path(args.out) if args.out else source.parent
    if args.check:
        stale = stale_configs(registry, root)
        for path in stale:
            print(f"out of date: {path} (run `milo-voice models triton-configs`)", file=sys.stderr)
        return 1 if stale else 0
    for path in write_configs(registry, root, args.instance_kind):
        print(f"wrote {path}")
    return 0


def served_models_settings(registry: Registry, profile: str) -> dict[str, str]:
    """What the facade knows of the served models (it reads no registry), as its ``MILO_*`` settings."""
    by_role = {spec.role: spec for spec in registry.models.values()}
    tts = by_role.get("tts")
    return {"MILO_PROFILE": profile, "MILO_VOICES": json.dumps(tts.weights(profile).voices if tts else {})}


@dataclass(frozen=True)
class LocalRedis:
    child: Child
    url: str


def _local_redis(args: argparse.Namespace, supervisor: Supervisor, scratch: Path) -> tuple[LocalRedis | None, str]:
    """The Redis that serve starts for the facade's state (sessions, tokens, limits, the translation
    cache), so that it survives a restart and is shared by replicas: unless ``MILO_REDIS_URL``
    names one already, ``--no-redis`` says not to, or redis-server is missing. Its data is
    append-only under the data folder. Also the line that says where the state lives."""
    if os.environ.get("MILO_REDIS_URL"):
        return None, f"state: Redis at {os.environ['MILO_REDIS_URL']} (MILO_REDIS_URL)"
    if args.no_redis or shutil.which("redis-server") is None:
        why = "--no-redis" if args.no_redis else "no redis-server on this machine"
        return None, f"state: in the facade's memory ({why}): sessions and tokens end with it"
    folder = Path(os.environ.get("MILO_DATA_DIR", REPO_ROOT / "data")) / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    child = supervisor.add(
        Child(
            name="redis",
            command=["redis-server", "--port", str(args.redis_port), "--bind", "127.0.0.1", "--dir", str(folder),
                     "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
            env=dict(os.environ),
            ready_checks=[accepts_connections(args.redis_port)],
        )
    )  # fmt: skip
    url = f"redis://127.0.0.1:{args.redis_port}/0"
    return LocalRedis(child, url), f"state: Redis at {url}, its data in {folder} (append-only)"


def _serve(args: argparse.Namespace) -> int:
    """Run a Triton server (the PyTriton host or the stock tritonserver) and the facade, each started
    again if it dies (``milo_voice.supervisor``); stop both on Ctrl-C or SIGTERM."""
    if args.model_repository and args.server != "tritonserver":
        print("error: --model-repository is for --server tritonserver", file=sys.stderr)
        return 2
    from milo_voice.serving.readiness import served_model_names

    with tempfile.TemporaryDirectory(prefix="milo-serve-") as scratch:
        state_file = Path(scratch) / "state.json"
        supervisor = Supervisor(state_file)
        # Both servers serve the same models with the same tensors; the facade cannot tell them apart.
        module = "pytriton_app" if args.server == "pytriton" else "milo_voice.serving.tritonserver"
        extra = ["--model-repository", args.model_repository] if args.model_repository else []
        host_env = dict(os.environ)
        if args.server == "tritonserver":  # one copy of the server for every start, removed with the rest
            extra += ["--workdir", str(Path(scratch) / "tritonserver")]
        else:
            # PyTriton's workspace (a copy of the server, its sockets) here too: a host killed outright
            # cannot remove its own, and the next start makes another.
            host_env["PYTRITON_HOME"] = str(Path(scratch) / "pytriton")
        # Triton's server readiness comes before the models are bound: wait on each model that
        # the registry serves (a registry may hold a subset, as the GPU benchmark's do).
        served = served_model_names(load_registry(), args.server)
        host = supervisor.add(
            Child(
                name="model-host",
                command=[sys.executable, "-m", module, "--http-port", str(args.http_port),
                         "--grpc-port", str(args.grpc_port), "--metrics-port", str(args.metrics_port), *extra],
                env=host_env,
                ready_checks=[answers_200(f"http://127.0.0.1:{args.http_port}/v2/models/{m}/ready") for m in served],
            )
        )  # fmt: skip
        redis, state_line = _local_redis(args, supervisor, Path(scratch))
        facade_env = {
            **os.environ,
            **({"MILO_REDIS_URL": redis.url} if redis else {}),
            "MILO_TRITON_URL": f"127.0.0.1:{args.http_port}",
            # Streams go over gRPC: the facade must know the port whatever it is.
            "MILO_TRITON_GRPC_URL": f"127.0.0.1:{args.grpc_port}",
            "MILO_SUPERVISOR_STATE": str(state_file),
            **served_models_settings(load_registry(), active_profile()),
        }
        facade = supervisor.add(
            Child(
                name="facade",
                command=[sys.executable, "-m", "api_facade", "--host", args.host, "--port", str(args.facade_port),
                         "--workers", str(args.facade_workers)],
                env=facade_env,
                ready_checks=[answers_200(f"http://127.0.0.1:{args.facade_port}/health")],
            )
        )  # fmt: skip
        # SIGTERM (a container runtime, a test) takes the same way out as Ctrl-C; and Ctrl-C (SIGINT)
        # does even where serve was started with SIGINT ignored, as a shell's background job is.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            if redis is not None:
                supervisor.start(redis.child)
                if not supervisor.wait_ready(redis.child, 30):
                    print(f"error: redis-server did not start on port {args.redis_port} (in use?)", file=sys.stderr)
                    return 1
            supervisor.start(host)
            if not supervisor.wait_ready(host, args.ready_timeout):
                code = host.process.poll() if host.process else None
                state = f"exited with {code}" if code is not None else "timed out"
                print(f"error: the model host of {args.server} did not become ready ({state})", file=sys.stderr)
                return 1
            supervisor.start(facade)
            print(
                f"Milo Voice is up: Triton http :{args.http_port} grpc :{args.grpc_port} "
                f"metrics :{args.metrics_port}, facade http://{args.host}:{args.facade_port}\n{state_line}",
                flush=True,
            )
            while True:
                supervisor.tick()
                time.sleep(0.25)
        except KeyboardInterrupt:
            return 0
        finally:
            supervisor.stop_all()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="milo-voice", description="Milo Voice serving stack")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the Triton server and the facade")
    serve.add_argument(
        "--server",
        choices=("pytriton", "tritonserver"),
        default="pytriton",
        help="the PyTriton host, or the stock tritonserver on model_repository/ (Python backend)",
    )
    serve.add_argument(
        "--model-repository", help="tritonserver: a repository other than model_repository/ (written by triton-configs)"
    )
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--facade-port", type=int, default=8080)
    serve.add_argument("--facade-workers", type=int, default=1, help="facade processes (they share one port)")
    serve.add_argument(
        "--host", default="127.0.0.1", help="the facade's address (default loopback only; 0.0.0.0: every interface)"
    )
    serve.add_argument("--ready-timeout", type=float, default=600)
    serve.add_argument("--redis-port", type=int, default=6379, help="the Redis serve starts for the facade's state")
    serve.add_argument("--no-redis", action="store_true", help="keep the facade's state in its memory")
    serve.set_defaults(func=_serve)

    models = commands.add_parser("models", help="manage model weights").add_subparsers(dest="action", required=True)
    pull = models.add_parser("pull", help="build (embedded) or download and convert (production) weights")
    pull.add_argument("--profile", choices=PROFILES, default=active_profile())
    pull.add_argument(
        "--force", action="store_true", help="build or fetch again even if complete (new weights replace the old)"
    )
    pull.add_argument("models", nargs="*", help="model names (default: all)")
    pull.set_defaults(func=_pull)
    listing = models.add_parser("list", help="list models, their weights and whether they are present")
    listing.set_defaults(func=_list)
    configs = models.add_parser(
        "triton-configs", help="write model_repository/*/config.pbtxt and 1/model.py from the registry"
    )
    configs.add_argument("--check", action="store_true", help="exit 1 if a committed file is out of date")
    configs.add_argument("--out", help="write the repository there instead (an image's own copy)")
    configs.add_argument(
        "--instance-kind", choices=("auto", "cpu", "gpu"), help="every instance of this kind instead of the registry's"
    )
    configs.set_defaults(func=_triton_configs)

    normalize = commands.add_parser("normalize", help="print the spoken form of a text")
    normalize.add_argument("--lang", choices=SUPPORTED_LANGUAGES, required=True)
    normalize.add_argument("text", nargs="+")
    normalize.set_defaults(func=_normalize)

    quality = commands.add_parser(
        "eval", help="a quality report of a served stack: TTS -> STT, STT, translation chrF (markdown and JSON)"
    )
    quality.add_argument("--url", help="the facade of a running stack (default: start this machine's, then stop it)")
    quality.add_argument("--token", default=os.environ.get("MILO_EVAL_TOKEN", ""), help="an API token, if auth is on")
    quality.add_argument("--out", default="eval", help="folder for eval.md and eval.json")
    quality.add_argument("--clips", help="a manifest (path, language, text) of recordings for the STT rows")
    quality.add_argument("--spoken-sentences", type=int, default=12, help="sentences said and heard per language")
    quality.add_argument("--translation-pairs", type=int, help="translate only the first N pairs (default: all)")
    quality.set_defaults(func=_eval)

    # Commands that other packages add (the facade's ``tokens``), found by their entry points:
    # the core knows nothing of them.
    for plugin in entry_points(group=COMMAND_PLUGINS):
        plugin.load()(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
