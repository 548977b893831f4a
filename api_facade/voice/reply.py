"""A chat reply spoken as it is written: the chat streams, each finished piece is synthesised
while the next is written, and the audio comes out in order.

The consumer reads ``ReplyEvent``s; closing the iterator early (a client that left, a user who
spoke over the reply) cancels the chat on the server and the syntheses still running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from api_facade.voice.language import reply_language
from api_facade.voice.pieces import for_later_pieces
from api_facade.voice.sentences import ChunkRules, SentenceChunker
from client import Speech, TritonPool
from contract.records import ChatRequest, InputError


@dataclass(frozen=True)
class ReplyText:
    """A piece of the reply's text, as the chat wrote it."""

    text: str


@dataclass(frozen=True)
class ReplyAudio:
    """One piece of the reply, spoken; ``index`` counts the pieces from 0."""

    index: int
    text: str
    speech: Speech
    language: str


@dataclass(frozen=True)
class ReplyEnd:
    text: str  # the whole reply
    finish_reason: str
    language: str | None  # the voice it was spoken with (None: nothing to speak)
    unspoken: tuple[str, ...] = ()  # pieces the voice refused (nothing it can say in them)


ReplyEvent = ReplyText | ReplyAudio | ReplyEnd


@dataclass(frozen=True)
class Voice:
    """How the reply is spoken: the language asked for (None: the reply's own, see
    ``reply_language``), the one the user spoke, the default, and the speed."""

    asked: str | None = None
    heard: str | None = None
    default: str = "mg"
    speed: float = 1.0


async def spoken_reply(
    triton: TritonPool,
    request: ChatRequest,
    voice: Voice,
    model: str = "chat",
    rules: ChunkRules | None = None,
) -> AsyncIterator[ReplyEvent]:
    """The reply's text pieces and audio, as each is ready, then its ``ReplyEnd``."""
    events: asyncio.Queue[ReplyEvent | BaseException | None] = asyncio.Queue()
    syntheses: asyncio.Queue[tuple[str, asyncio.Task[Speech]] | None] = asyncio.Queue()
    chosen: list[str] = []  # the voice, once the first piece fixes it
    written: list[str] = []
    finish_reason = ["stop"]
    later = for_later_pieces(triton)  # scheduled after every conversation's first piece

    async def write() -> None:
        chunker = SentenceChunker(rules)

        def speak(piece: str) -> None:
            first = not chosen
            if first:
                chosen.append(reply_language(voice.asked, voice.heard, piece, voice.default))
            # Started at once: a piece is synthesised while the chat writes the next.
            speaker = triton if first else later
            task = asyncio.create_task(speaker.synthesize(piece, chosen[0], voice.speed))
            syntheses.put_nowait((piece, task))

        async for delta in triton.chat_stream(request, model):
            if delta.text:
                written.append(delta.text)
                events.put_nowait(ReplyText(delta.text))
                for piece in chunker.feed(delta.text):
                    speak(piece)
            finish_reason[0] = delta.finish_reason or finish_reason[0]
        rest = chunker.flush()
        if rest:
            speak(rest)
        syntheses.put_nowait(None)

    async def say() -> None:
        index, unspoken = 0, []
        while (item := await syntheses.get()) is not None:
            piece, task = item
            try:
                speech = await task
            except InputError:
                unspoken.append(piece)  # e.g. only symbols: the text has it, the voice says nothing
                continue
            events.put_nowait(ReplyAudio(index, piece, speech, chosen[0]))
            index += 1
        text = "".join(written).strip()
        events.put_nowait(ReplyEnd(text, finish_reason[0], chosen[0] if chosen else None, tuple(unspoken)))
        events.put_nowait(None)

    def report(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            events.put_nowait(task.exception())

    tasks = [asyncio.create_task(write()), asyncio.create_task(say())]
    for task in tasks:
        task.add_done_callback(report)
    try:
        while (event := await events.get()) is not None:
            if isinstance(event, BaseException):
                raise event
            yield event
    finally:
        for task in tasks:
            task.cancel()
        while not syntheses.empty():
            item = syntheses.get_nowait()
            if item is not None:
                item[1].cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
