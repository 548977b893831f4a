"""Facade settings, read from the environment (``MILO_*``) once at start."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MILO_", env_file=".env", extra="ignore")

    triton_url: str = "127.0.0.1:8000"
    triton_protocol: str = "http"
    # Streaming models are served over gRPC; default: the HTTP port + 1.
    triton_grpc_url: str | None = None
    triton_timeout_s: float = 60.0
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
    # Uploads larger than this are refused with 413 before any decoding.
    max_upload_bytes: int = 25 * 1024 * 1024
    max_audio_seconds: float = 600.0


@lru_cache
def get_settings() -> Settings:
    return Settings()
