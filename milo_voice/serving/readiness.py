"""Whether a Triton server serves every model of the registry: the model server's health check.

``python -m milo_voice.serving.readiness [--url http://127.0.0.1:8000]`` exits 0 when each model
answers ready, 1 otherwise, naming those that do not. Triton's own ``/v2/health/ready`` is not
enough: it answers ready before PyTriton binds the models, then not ready while they are bound
one by one, then ready again, so a check of it alone passes before the server can serve.
"""

from __future__ import annotations

import argparse
import os
import sys

from contract.tensors import ROLE_MODELS
from milo_voice.registry import Registry, load_registry
from milo_voice.supervisor import answers_200


def served_model_names(registry: Registry, server: str) -> list[str]:
    """The Triton models ``server`` (pytriton or tritonserver) serves for ``registry``; the stock
    server has no model that only a shared process can serve (``chat_cancel``)."""
    return [
        io.name
        for spec in registry.models.values()
        for io in ROLE_MODELS[spec.role]
        if server == "pytriton" or not io.shared_process_only
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="Triton's HTTP endpoint")
    parser.add_argument(
        "--server", default=os.environ.get("MILO_SERVER", "pytriton"), choices=["pytriton", "tritonserver"]
    )
    args = parser.parse_args(argv)
    names = served_model_names(load_registry(), args.server)
    waiting = [m for m in names if not answers_200(f"{args.url}/v2/models/{m}/ready")()]
    if waiting:
        print(f"not ready: {', '.join(waiting)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
