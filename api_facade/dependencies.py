"""What routes are given: the Triton client, the cache, the phrasebook (made once, at start)."""

from __future__ import annotations

from fastapi import Request

from api_facade.cache import TranslationCache
from api_facade.phrasebook import Phrasebook
from api_facade.sessions import SessionStore
from client import TritonPool


def get_triton(request: Request) -> TritonPool:
    return request.app.state.triton


def get_cache(request: Request) -> TranslationCache:
    return request.app.state.translation_cache


def get_phrasebook(request: Request) -> Phrasebook:
    return request.app.state.phrasebook


def get_translate_revision(request: Request) -> str:
    return request.app.state.translate_revision


def get_voices(request: Request) -> dict[str, str]:
    """Language -> voice name of the served TTS model."""
    return request.app.state.voices


def get_sessions(request: Request) -> SessionStore:
    return request.app.state.sessions
