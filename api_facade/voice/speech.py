"""A whole text spoken piece by piece (``/v1/tts`` and ``/v1/audio/speech`` streamed), through the
batched TTS model rather than the streaming one.

The streaming model holds its instance for a whole text, so concurrent streams wait for each
other; pieces sent to the batched model batch with every other stream's. The first piece goes
alone, for the soonest first byte; once it is back, the next ones go together (they batch while
the first plays), a few ahead at a time so that a long text cannot fill the model's queue, and
after every stream's first piece (``pieces.py``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from api_facade.voice.pieces import for_later_pieces
from api_facade.voice.sentences import SentenceChunker
from client import Speech, TritonPool
from contract.records import InputError

PIECES_AHEAD = 4


def text_pieces(text: str) -> list[str]:
    """``text`` cut as a streamed reply is: a short first piece, then whole sentences."""
    chunker = SentenceChunker()
    pieces = chunker.feed(text)
    rest = chunker.flush()
    return [*pieces, rest] if rest else pieces


async def spoken_text(
    triton: TritonPool, text: str, language: str, speed: float, ahead: int = PIECES_AHEAD
) -> AsyncIterator[Speech]:
    """Each piece's speech, in order. The first piece's refusal is raised (the request is bad);
    a later piece the voice cannot say (only symbols) is left out, as in a spoken reply. Closing
    the iterator early cancels the pieces in flight."""
    pieces = iter(text_pieces(text) or [text])
    first = await triton.synthesize(next(pieces), language, speed)
    later = for_later_pieces(triton)
    pending: deque[asyncio.Task[Speech]] = deque()

    def send_more() -> None:
        while len(pending) < ahead and (piece := next(pieces, None)) is not None:
            pending.append(asyncio.create_task(later.synthesize(piece, language, speed)))

    send_more()
    try:
        yield first
        while pending:
            task = pending.popleft()
            try:
                speech = await task
            except InputError:
                send_more()
                continue
            send_more()
            yield speech
    finally:
        for task in pending:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a piece nobody will hear has no error to report
            task.cancel()
