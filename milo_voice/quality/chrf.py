"""chrF (Popović, 2015): how much of a reference translation's character n-grams a translation has.

Computed over a corpus as sacreBLEU's ``CHRF()`` does by default (chrF2: n-grams of 1 to 6
characters, spaces removed, recall weighted twice precision), so the figures compare with published
ones: n-gram counts are summed over the corpus, precision and recall averaged over the orders that
both sides have, then combined. 0 to 100.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

CHAR_ORDER = 6
BETA = 2


def _ngrams(text: str, n: int) -> Counter[str]:
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF of ``hypotheses`` against ``references`` (one reference each)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    # Per order: n-grams of the hypotheses, of the references, and those they share.
    totals = [[0, 0, 0] for _ in range(CHAR_ORDER)]
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        said, expected = "".join(hypothesis.split()), "".join(reference.split())
        for n in range(1, CHAR_ORDER + 1):
            mine, theirs = _ngrams(said, n), _ngrams(expected, n)
            total = totals[n - 1]
            # A reference too short for this order leaves the hypothesis' n-grams out too.
            total[0] += sum(mine.values()) if theirs else 0
            total[1] += sum(theirs.values())
            total[2] += sum((mine & theirs).values())
    orders = [(match / hyp, match / ref) for hyp, ref, match in totals if hyp and ref]
    if not orders:
        return 0.0
    precision = sum(p for p, _ in orders) / len(orders)
    recall = sum(r for _, r in orders) / len(orders)
    if precision + recall == 0:
        return 0.0
    factor = BETA**2
    return 100 * (1 + factor) * precision * recall / (factor * precision + recall)
