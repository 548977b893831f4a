"""A chat turn from the facade's side: what the model is sent, what the session keeps, who speaks it.

Every chat route goes through here (``/v1/chat``, ``/v1/chat/completions``, the voice routes),
so the history is trimmed in one place and the reply's voice is chosen in one place. The
facade bounds what it sends by an estimate of the model's context; the model's role then
fits the conversation to its context exactly, by tokens, and says how many turns it left out.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from api_facade.sessions import SessionStore, Turn, trim_to_budget
from api_facade.settings import Settings
from contract.records import ChatMessage, ChatRequest

CHAT_MODELS = {"local": "chat", "cloud": "chat_cloud"}


@dataclass(frozen=True)
class ChatTurn:
    """One user turn on its way to the model."""

    session_id: str
    stored_turns: int  # turns the session held before this one
    message: str  # the user's
    request: ChatRequest  # what the model is sent: the history that fits, then the message


class Conversations:
    def __init__(self, sessions: SessionStore, settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings

    def request(
        self,
        turns: Sequence[Turn],
        language: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: tuple[str, ...] = (),
    ) -> ChatRequest:
        """``turns`` as the model's request, the oldest left out beyond what its context holds;
        what is None is left to the model's defaults."""
        # The model's own context: what is left of n_ctx once the system prompt and a reply of
        # the asked length have room (the model keeps room for its default length itself).
        budget = self.settings.chat_n_ctx - self.settings.chat_system_prompt_tokens - (max_tokens or 0)
        kept = trim_to_budget(list(turns), budget)
        messages = [ChatMessage(t.role, t.content) for t in kept]
        return ChatRequest(messages, language, max_tokens, temperature, top_p, seed, stop)

    async def turn(
        self,
        session_id: str | None,
        message: str,
        language: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> ChatTurn:
        """The next turn of session ``session_id`` (a new session when None)."""
        session_id = session_id or uuid.uuid4().hex
        history = await self.sessions.load(session_id) or []
        request = self.request([*history, Turn("user", message)], language, max_tokens, temperature)
        return ChatTurn(session_id, len(history), message, request)

    async def answered(self, turn: ChatTurn, reply: str) -> int:
        """Store the turn and its reply; the session's turns now. An empty reply is not stored:
        the user may ask again (and an empty reply is never replaced by an invented one)."""
        if not reply.strip():
            return turn.stored_turns
        await self.sessions.append(turn.session_id, [Turn("user", turn.message), Turn("assistant", reply)])
        return turn.stored_turns + 2

    def model(self, backend: str | None) -> str:
        """The Triton model of a chat backend ("local", "cloud"; None: the default one). The host
        serves "chat_cloud" when a cloud URL is configured."""
        return CHAT_MODELS[backend or self.settings.chat_default_backend]
