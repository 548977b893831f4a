"""What routes are given, typed: settings, the stores and the Triton client, all made once per app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends
from starlette.requests import HTTPConnection

from api_facade.cache import TranslationCache
from api_facade.conversation import Conversations
from api_facade.phrasebook import Phrasebook
from api_facade.served_weights import ServedRevisions
from api_facade.settings import Settings
from api_facade.voice.vad import VadModel
from client import TritonPool


def get_settings(request: HTTPConnection) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_triton(request: HTTPConnection) -> TritonPool:
    """The app's Triton client, at the default priority (routes take theirs from ``access.triton_for``)."""
    return request.app.state.triton  # type: ignore[no-any-return]


def get_cache(request: HTTPConnection) -> TranslationCache:
    return request.app.state.translation_cache  # type: ignore[no-any-return]


def get_served_revisions(request: HTTPConnection) -> ServedRevisions:
    return request.app.state.served_revisions  # type: ignore[no-any-return]


def get_phrasebook(request: HTTPConnection) -> Phrasebook:
    return request.app.state.phrasebook  # type: ignore[no-any-return]


Made = TypeVar("Made")


def on_the_loop(getter: Callable[[HTTPConnection], Made]) -> Callable[[HTTPConnection], Awaitable[Made]]:
    """``getter`` as a dependency run on the event loop: FastAPI runs a plain function's dependency
    on its thread pool, a hand-over to a thread and back for each request, to read an attribute."""

    async def dependency(request: HTTPConnection) -> Made:
        return getter(request)

    return dependency


SettingsDep = Annotated[Settings, Depends(on_the_loop(get_settings))]
TritonDep = Annotated[TritonPool, Depends(on_the_loop(get_triton))]
CacheDep = Annotated[TranslationCache, Depends(on_the_loop(get_cache))]
PhrasebookDep = Annotated[Phrasebook, Depends(on_the_loop(get_phrasebook))]
RevisionsDep = Annotated[ServedRevisions, Depends(on_the_loop(get_served_revisions))]


def get_vad(connection: HTTPConnection) -> VadModel:
    """The voice activity model, loaded at the first realtime conversation."""
    state = connection.app.state
    if getattr(state, "vad", None) is None:
        state.vad = VadModel()
    return state.vad  # type: ignore[no-any-return]


def get_conversations(request: HTTPConnection) -> Conversations:
    return request.app.state.conversations  # type: ignore[no-any-return]


ConversationsDep = Annotated[Conversations, Depends(on_the_loop(get_conversations))]
VadDep = Annotated[VadModel, Depends(get_vad)]  # on the thread pool: its first call loads the model
