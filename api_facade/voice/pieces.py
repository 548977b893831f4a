"""Which pieces of speech Triton schedules first.

Nobody hears a reply's second piece before its first has played (a first piece is a few seconds
of speech), but everyone waits for a first piece. So the first piece of a spoken reply or of a
streamed text goes at the caller's tier priority, and later pieces ``LATER_PIECES`` levels after
it: under load, every conversation's first audio passes the pieces that can wait. The TTS model
has twice the tiers' levels in the registry (1 and 2 for the tiers' first pieces, 3 and 4 for
their later ones).
"""

from __future__ import annotations

from client import TritonPool

LATER_PIECES = 2  # the tiers' levels


def for_later_pieces(triton: TritonPool) -> TritonPool:
    """``triton``, its calls scheduled after every tier's first pieces."""
    return triton.with_options(triton.options.later(LATER_PIECES))
