"""The model registry: ``model_repository/registry.toml`` read into typed specs.

One file says, for every served model, which weights it loads in each profile, how
Triton's dynamic batcher groups its requests, and how many instances serve it. The
PyTriton host, the weight builders and the CLI all read it from here.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from milo_voice.roles.nllb.kernels import StepKernels
from milo_voice.settings import DEFAULT_REGISTRY, PROFILES, server_settings

ROLES = ("stt", "tts", "translate", "chat")
IMPLEMENTATION = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def models_dir() -> Path:
    """Where built and downloaded weights live (``MILO_MODELS_DIR``, default ``./models``)."""
    return server_settings().models_dir.resolve()


def active_profile() -> str:
    return server_settings().profile


@dataclass(frozen=True)
class Weights:
    source: str
    format: str
    revision: str
    architecture: str = ""
    voices: dict[str, str] = field(default_factory=dict)
    alternatives: tuple[str, ...] = ()

    @property
    def scheme(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def location(self) -> str:
        return self.source.split(":", 1)[1]


@dataclass(frozen=True)
class Batching:
    max_batch_size: int
    max_queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...]
    priority_levels: int
    default_priority_level: int
    max_queue_size: int
    # The longest a request may wait in the queue before Triton rejects it (0: forever).
    # Triton lets a request shorten this, never lengthen it: with 0 a per-request timeout is ignored.
    queue_timeout_us: int = 0


@dataclass(frozen=True)
class Instances:
    count: int
    kind: str  # "auto" | "cpu" | "gpu"
    # Instances on a host with GPUs, where it differs: a GPU's instances work in parallel where
    # a CPU's would only share its cores.
    gpu_count: int | None = None

    def count_on(self, gpus: int) -> int:
        return self.gpu_count if gpus and self.gpu_count else self.count


@dataclass(frozen=True)
class ModelSpec:
    name: str
    role: str
    description: str
    batching: Batching
    instances: Instances
    params: dict[str, Any]
    profiles: dict[str, Weights]
    # "module:Class": a subclass of the role's class built in its place with the same arguments
    # (a load test's fixed generation lengths, a fine-tuned variant's own pre- or post-processing).
    implementation: str = ""
    # The batching on a host with GPUs, where it differs: there a batch of 32 costs little more
    # than one request, where on a CPU its time grows with every request in it.
    gpu_batching: Batching | None = None

    def batching_on(self, gpus: int) -> Batching:
        return self.gpu_batching if gpus and self.gpu_batching else self.batching

    def weights(self, profile: str) -> Weights:
        try:
            return self.profiles[profile]
        except KeyError:
            raise ValueError(f"model {self.name!r} has no weights for profile {profile!r}") from None

    def path(self, profile: str, root: Path | None = None) -> Path:
        """Directory holding this model's weights for ``profile``."""
        return (root or models_dir()) / profile / self.name


@dataclass(frozen=True)
class Registry:
    models: dict[str, ModelSpec]

    def __getitem__(self, name: str) -> ModelSpec:
        return self.models[name]

    def by_role(self, role: str) -> ModelSpec:
        for spec in self.models.values():
            if spec.role == role:
                return spec
        raise KeyError(f"no model with role {role!r} in the registry")


def _parse_model(name: str, table: dict[str, Any]) -> ModelSpec:
    role = table["role"]
    if role not in ROLES:
        raise ValueError(f"model {name!r}: unknown role {role!r}; expected one of {ROLES}")
    batching = _checked_batching(name, Batching(
        max_batch_size=int(table["max_batch_size"]),
        max_queue_delay_us=int(table["max_queue_delay_us"]),
        preferred_batch_sizes=tuple(table.get("preferred_batch_sizes", ())),
        priority_levels=int(table.get("priority_levels", 0)),
        default_priority_level=int(table.get("default_priority_level", 0)),
        max_queue_size=int(table.get("max_queue_size", 0)),
        queue_timeout_us=int(table.get("queue_timeout_us", 0)),
    ))  # fmt: skip
    gpu_batching = None
    if "gpu_batching" in table:  # the keys it names replace the CPU's
        changes = dict(table["gpu_batching"])
        unknown = set(changes) - {f.name for f in fields(Batching)}
        if unknown:
            raise ValueError(f"model {name!r}: gpu_batching has unknown keys {sorted(unknown)}")
        if "preferred_batch_sizes" in changes:
            changes["preferred_batch_sizes"] = tuple(changes["preferred_batch_sizes"])
        gpu_batching = _checked_batching(name, replace(batching, **changes))
    gpu_count = table["instances"].get("gpu_count")
    instances = Instances(
        count=int(table["instances"]["count"]),
        kind=table["instances"].get("kind", "auto"),
        gpu_count=int(gpu_count) if gpu_count is not None else None,
    )
    if instances.count < 1 or instances.kind not in ("auto", "cpu", "gpu"):
        raise ValueError(f"model {name!r}: bad instances {table['instances']!r}")
    profiles = {}
    for profile, weights in table.get("weights", {}).items():
        if profile not in PROFILES:
            raise ValueError(f"model {name!r}: unknown profile {profile!r}")
        profiles[profile] = Weights(
            source=weights["source"],
            format=weights["format"],
            revision=str(weights["revision"]),
            architecture=weights.get("architecture", ""),
            voices=dict(weights.get("voices", {})),
            alternatives=tuple(weights.get("alternatives", ())),
        )
    params = dict(table.get("params", {}))
    _check_step_batching(name, role, params)
    _check_step_kernels(name, role, params)
    implementation = str(table.get("implementation", ""))
    if implementation and not IMPLEMENTATION.fullmatch(implementation):
        raise ValueError(f"model {name!r}: implementation {implementation!r} is not 'module:Class'")
    return ModelSpec(
        name=name,
        role=role,
        description=table.get("description", ""),
        batching=batching,
        instances=instances,
        params=params,
        profiles=profiles,
        implementation=implementation,
        gpu_batching=gpu_batching,
    )


# Step-level batching's keys, with the engines that load the torch engine where each is read: a
# CPU host's "auto" is CTranslate2 alone, a GPU host's loads torch beside it (milo_voice/roles/translate.py).
STEP_BATCHING_ENGINES = {
    "step_batching": ("torch", "torch+ctranslate2"),
    "gpu_step_batching": ("auto", "torch", "torch+ctranslate2"),
}


def _check_step_batching(name: str, role: str, params: dict[str, Any]) -> None:
    """Step-level batching drives the translation role's torch engine, which runs beam search: a
    registry that asks it of anything else is refused when it is read, not when a host loads it."""
    for key, engines in STEP_BATCHING_ENGINES.items():
        if not params.get(key):
            continue
        if role != "translate":
            raise ValueError(f"model {name!r}: {key} is for translation's torch engine, not {role}")
        engine = params.get("engine", "auto")
        if engine not in engines:
            allowed = " or ".join(repr(e) for e in engines)
            raise ValueError(f"model {name!r}: {key} needs the torch engine (engine {allowed}), not {engine!r}")
        if int(params.get("beam_size", 2)) < 2:
            raise ValueError(f"model {name!r}: {key} needs beam_size 2 or more (the torch engine's beam search)")


def _check_step_kernels(name: str, role: str, params: dict[str, Any]) -> None:
    """The ways translation's search steps run (``gpu_step_attention``, ``gpu_step_top``), checked
    when the registry is read."""
    if role != "translate":
        return
    try:
        StepKernels.from_params(params)
    except ValueError as error:
        raise ValueError(f"model {name!r}: {error}") from None


def _checked_batching(name: str, batching: Batching) -> Batching:
    if batching.max_batch_size < 1:
        raise ValueError(f"model {name!r}: max_batch_size below 1")
    if any(not 1 <= size <= batching.max_batch_size for size in batching.preferred_batch_sizes):
        raise ValueError(f"model {name!r}: a preferred batch size outside 1..{batching.max_batch_size}")
    if batching.priority_levels and not 1 <= batching.default_priority_level <= batching.priority_levels:
        raise ValueError(f"model {name!r}: default_priority_level outside 1..{batching.priority_levels}")
    return batching


def registry_path() -> Path:
    """The registry in use: ``MILO_REGISTRY``, else the repository's own."""
    return server_settings().registry


def load_registry(path: Path | str | None = None) -> Registry:
    path = Path(path or registry_path())
    with path.open("rb") as f:
        data = tomllib.load(f)
    return Registry(models={name: _parse_model(name, table) for name, table in data["models"].items()})


def model_section(name: str, path: Path = DEFAULT_REGISTRY) -> str:
    """The TOML text of ``[models.<name>]`` and its subtables (its weights), up to the next model:
    a registry of that model alone, as the tests and benchmarks write one to change a few lines."""
    text = path.read_text()
    start = text.index(f"[models.{name}]")
    following = re.search(rf"^\[models\.(?!{re.escape(name)}[.\]])", text[start + 1 :], re.MULTILINE)
    return text[start : start + 1 + following.start()] if following else text[start:]
