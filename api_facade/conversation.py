"""A chat turn from the facade's side: what the model is sent, what the session keeps, who speaks it.

Every chat route goes through here (``/v1/chat``, ``/v1/chat/completions``, the voice routes),
so the history is trimmed in one place and the reply's voice is chosen in one place. The
facade bounds what it sends by an estimate of the model's context; the model's role then
fits the conversation to its context exactly, by tokens, and says how many turns it left out.

A session belongs to whoever created it (``owned_by``: a token, or an anonymous client's
address when auth is off): its id is looked up in its owner's namespace only, so another
caller who knows or guesses the id finds nothing, and a client-chosen id cannot reach anyone
else's. Ids the server issues are random (122 bits).
"""

from __future__ import annotations

import hashlib
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

    session_id: str  # as its owner names it
    key: str  # where it is stored: in its owner's namespace
    stored_turns: int  # turns the session held before this one
    message: str  # the user's
    request: ChatRequest  # what the model is sent: the history that fits, then the message


class Conversations:
    def __init__(self, sessions: SessionStore, settings: Settings, owner: str = "") -> None:
        self.sessions = sessions
        self.settings = settings
        self.owner = owner

    def owned_by(self, owner: str) -> Conversations:
        """The conversations of ``owner`` (``Caller.owner``)."""
        return Conversations(self.sessions, self.settings, owner)

    def key(self, session_id: str) -> str:
        if not self.owner:
            raise RuntimeError("a session is looked up for its owner: use Conversations.owned_by")
        # Hashed: a token's name (or a client's address) is not written into the store's keys.
        return f"{hashlib.sha256(self.owner.encode()).hexdigest()[:24]}:{session_id}"

    async def history(self, session_id: str, stale_ok: bool = False) -> list[Turn] | None:
        """The owner's session ``session_id``, or None (never created by this owner, deleted,
        expired). A session stored before sessions had owners is claimed by the first caller
        who names it, and is then theirs alone (nothing stored is lost by the change)."""
        key = self.key(session_id)
        turns = await self.sessions.load(key, stale_ok)
        if turns is None and (unowned := await self.sessions.load(session_id)):
            await self.sessions.append(key, unowned)
            await self.sessions.delete(session_id)
            turns = unowned
        return turns

    async def forget(self, session_id: str) -> bool:
        return await self.sessions.delete(self.key(session_id))

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
        history = await self.history(session_id) or []
        request = self.request([*history, Turn("user", message)], language, max_tokens, temperature)
        return ChatTurn(session_id, self.key(session_id), len(history), message, request)

    async def answered(self, turn: ChatTurn, reply: str) -> int:
        """Store the turn and its reply; the session's turns now. An empty reply is not stored:
        the user may ask again (and an empty reply is never replaced by an invented one)."""
        if not reply.strip():
            return turn.stored_turns
        await self.sessions.append(turn.key, [Turn("user", turn.message), Turn("assistant", reply)])
        return turn.stored_turns + 2

    def model(self, backend: str | None) -> str:
        """The Triton model of a chat backend ("local", "cloud"; None: the default one). The host
        serves "chat_cloud" when a cloud URL is configured."""
        return CHAT_MODELS[backend or self.settings.chat_default_backend]
