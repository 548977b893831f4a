"""Facade settings, read from the environment (``MILO_*``) once at start."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROUTE_FAMILIES = ("stt", "tts", "translate", "chat", "voice", "admin", "models")


class TierPolicy(BaseModel):
    """What a token tier gets: its Triton priority, how long it may queue, and its rate limits."""

    # Triton priority level: 1 is scheduled first; the registry declares 2 levels.
    priority: int = Field(ge=1)
    # Triton drops a request still queued after this long (answered 503, retry later);
    # it can shorten the model's queue_timeout_us in the registry, never lengthen it.
    queue_timeout_s: float = Field(gt=0)
    # Route family -> limit in the ``limits`` notation ("30/minute"); "default" for the rest.
    limits: dict[str, str]

    def limit_for(self, family: str) -> str:
        return self.limits.get(family) or self.limits["default"]


DEFAULT_TIERS = {
    "premium": TierPolicy(
        priority=1,
        queue_timeout_s=300,
        limits={
            "stt": "120/minute",
            "tts": "300/minute",
            "translate": "600/minute",
            "chat": "120/minute",
            "voice": "120/minute",  # a spoken turn (POST /v1/voice, a realtime response)
            "default": "120/minute",
        },
    ),
    "standard": TierPolicy(
        priority=2,
        queue_timeout_s=120,
        limits={
            "stt": "30/minute",
            "tts": "60/minute",
            "translate": "120/minute",
            "chat": "30/minute",
            "voice": "30/minute",
            "default": "30/minute",
        },
    ),
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MILO_", env_file=".env", extra="ignore")

    # One Triton server, or several comma-separated: the facade spreads calls over them
    # (fewest in flight first), probes their health and fails over (client.pool).
    triton_url: str = "127.0.0.1:8000"
    # The key of Triton servers that guard their inference endpoints (MILO_TRITON_KEY, the same
    # on the model server): deploy/docker-compose.yml, where the model server listens beyond loopback.
    triton_key: str | None = None
    triton_protocol: str = "http"
    # Streaming models are served over gRPC; default: each server's HTTP port + 1.
    triton_grpc_url: str | None = None
    # A call's compute budget: the client waits for the caller's queue timeout plus this.
    triton_timeout_s: float = 60.0
    triton_probe_interval_s: float = 2.0
    required_models: list[str] = ["stt", "tts", "translate", "chat"]
    # Redis keeps shared state (translation cache) when set, e.g. redis://127.0.0.1:6379/0.
    redis_url: str | None = None
    translation_cache_ttl_s: int = 7 * 24 * 3600
    translation_cache_entries: int = 10_000
    session_ttl_s: int = 24 * 3600
    # The chat model's context window, and what Milo's system prompt takes of it.
    chat_n_ctx: int = 4096
    chat_system_prompt_tokens: int = 120
    voice_default_language: str = "mg"
    chat_default_backend: str = "local"
    # What the served models are, which ``milo-voice serve`` sets from the registry: the weights'
    # profile and each TTS language's voice. (Which weights: the models say, ``served_weights``.)
    # The default voices are the production profile's, which a facade deployed alone serves.
    profile: str = "embedded"
    voices: dict[str, str] = {"mg": "mms-tts-mlg", "fr": "mms-tts-fra"}
    # Uploads larger than this are refused with 413 before any decoding; other bodies (JSON) beyond
    # max_json_bytes. A body must have arrived within its timeout (api_facade/body_limits.py).
    max_upload_bytes: int = 25 * 1024 * 1024
    max_json_bytes: int = 1024 * 1024
    upload_body_timeout_s: float = 120.0
    json_body_timeout_s: float = 15.0
    max_audio_seconds: float = 600.0
    # WebSocket /v1/realtime: a conversation ends after max_session_s, or idle_timeout_s without a
    # frame from the client; a frame beyond max_frame_bytes is refused (an error event, the
    # connection stays); a user turn is ended after max_turn_s of speech.
    realtime_max_session_s: float = 900.0
    realtime_idle_timeout_s: float = 60.0
    realtime_max_frame_bytes: int = 256 * 1024
    realtime_max_turn_s: float = 60.0
    # Partial transcripts while the user speaks: one each time this much more speech arrived.
    realtime_partial_interval_s: float = 1.0

    # Access control. Unset: on, except in the embedded quick start (MILO_PROFILE=embedded).
    auth_enabled: bool | None = None
    # Where the token file lives when there is no Redis.
    data_dir: Path = Path(__file__).resolve().parent.parent / "data"
    token_rotation_grace_s: float = 3600.0
    tiers: dict[str, TierPolicy] = DEFAULT_TIERS
    # The tier of every caller while auth is off.
    anonymous_tier: str = "standard"
    # Per client address and route family: anonymous callers, and calls without a valid token.
    ip_rate_limit: str = "600/minute"
    # Proxies whose X-Forwarded-For is believed (addresses or CIDR blocks).
    trusted_proxies: list[str] = []
    # Serve /metrics on this port instead of the facade's own.
    metrics_port: int | None = None
    # Set by `milo-voice serve`: its processes' state (milo_voice.supervisor), shown in /ready and metrics.
    supervisor_state: Path | None = None

    @property
    def max_upload_body_bytes(self) -> int:
        """The body an upload may take: base64 (a JSON upload) grows the audio by a third, and
        multipart adds a little framing."""
        return self.max_upload_bytes * 4 // 3 + 65536

    def supervised_processes(self) -> dict[str, dict[str, Any]]:
        """What ``milo-voice serve`` last wrote of its processes; empty when not run by it."""
        if self.supervisor_state is None:
            return {}
        try:
            return json.loads(self.supervisor_state.read_text())["processes"]
        except (OSError, ValueError, KeyError):
            return {}

    @model_validator(mode="after")
    def _anonymous_tier_is_a_tier(self) -> Settings:
        if self.anonymous_tier not in self.tiers:
            raise ValueError(f"anonymous_tier {self.anonymous_tier!r} is not one of the tiers {sorted(self.tiers)}")
        return self

    @property
    def triton_urls(self) -> list[str]:
        return [url.strip() for url in self.triton_url.split(",") if url.strip()]

    @property
    def triton_grpc_urls(self) -> list[str | None]:
        if not self.triton_grpc_url:
            return [None] * len(self.triton_urls)
        return [url.strip() for url in self.triton_grpc_url.split(",") if url.strip()]

    @property
    def auth_on(self) -> bool:
        return self.auth_enabled if self.auth_enabled is not None else self.profile != "embedded"

    def tier(self, name: str) -> TierPolicy:
        return self.tiers.get(name) or self.tiers[self.anonymous_tier]


@lru_cache
def settings_from_environment() -> Settings:
    """The settings of a process that is not a facade app (the tokens command)."""
    return Settings()
