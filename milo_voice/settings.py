"""The model servers' settings, read from the environment (``MILO_*``) in this one place.

The facade has its own (``api_facade.settings``): the two processes share no setting but the
profile, which ``milo-voice serve`` passes to both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REGISTRY = REPO_ROOT / "model_repository" / "registry.toml"
# Which weights: the embedded ones (built from what packages ship) or the production ones.
Profile = Literal["embedded", "production"]
PROFILES: tuple[str, ...] = get_args(Profile)


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MILO_", extra="ignore")

    profile: Profile = "embedded"
    models_dir: Path = REPO_ROOT / "models"
    registry: Path = DEFAULT_REGISTRY
    # Threads per instance for the CPU roles; 0: the cores the process may run on.
    cpu_threads: int = 0
    # Chat through the OpenAI-compatible cloud backend instead of the local model; with a URL, the
    # cloud backend is also served beside the local one as ``chat_cloud``.
    chat_backend: Literal["local", "cloud"] = "local"
    chat_cloud_url: str | None = None
    chat_cloud_model: str = "default"
    chat_cloud_key: str | None = None
    triton_log_verbose: int = 0
    # Where Triton's HTTP and gRPC servers listen. Loopback: clients go through the facade, with its
    # tokens, limits and priorities. A model-server container listens on 0.0.0.0 for the facade's
    # container, on the internal network only (deploy/docker-compose.yml publishes no Triton port).
    triton_bind: str = "127.0.0.1"
    # The key Triton's inference and management endpoints then need (contract/triton_access.py);
    # required where triton_bind is not loopback.
    triton_key: str | None = None
    # The stock server's model processes share the GPU through CUDA MPS (milo_voice/serving/cuda_mps.py).
    cuda_mps: bool = False

    @field_validator("chat_cloud_url", "triton_key")
    @classmethod
    def _unset_when_empty(cls, value: str | None) -> str | None:
        return value or None


def server_settings() -> ServerSettings:
    """Read anew at each call: tests and the CLI change the environment between calls."""
    return ServerSettings()
