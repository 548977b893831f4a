"""Facade settings, read from the environment (``MILO_*``) once at start."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MILO_", env_file=".env", extra="ignore")

    triton_url: str = "127.0.0.1:8000"
    triton_protocol: str = "http"
    triton_timeout_s: float = 60.0
    required_models: list[str] = ["stt", "tts", "translate", "chat"]


@lru_cache
def get_settings() -> Settings:
    return Settings()
