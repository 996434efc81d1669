"""Score fusion: normalise each retriever's scores, combine them, and order the result."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def minmax(scores: Sequence[float | None]) -> list[float]:
    """Scale present scores to [0, 1]; missing ones (None) get 0.0, the worst present score.

    When every present score is equal there is no spread to scale, and they all get 1.0: a
    retriever that found candidates and cannot tell them apart still found them.
    """
    present = [s for s in scores if s is not None]
    if not present:
        return [0.0] * len(scores)
    lo, hi = min(present), max(present)
    if hi == lo:
        return [0.0 if s is None else 1.0 for s in scores]
    span = hi - lo
    return [0.0 if s is None else (s - lo) / span for s in scores]


def weighted_sum(
    components: Mapping[str, Sequence[float]], weights: Mapping[str, float]
) -> list[float]:
    """Per candidate, the sum of weight * component score.

    A non-zero weight needs its component (a typo must not silently drop a signal);
    components without a weight do not count. fsum rounds the exact sum once, so the result,
    and with it any tie-breaking, does not depend on the order of the names.
    """
    lengths = {len(values) for values in components.values()}
    if len(lengths) > 1:
        raise ValueError(f"components differ in length: {sorted(lengths)}")
    missing = sorted(name for name, w in weights.items() if w != 0.0 and name not in components)
    if missing:
        raise ValueError(f"weighted components missing: {missing}")
    n = lengths.pop() if lengths else 0
    used = [(weights[name], components[name]) for name in sorted(weights) if weights[name] != 0.0]
    return [math.fsum(w * values[i] for w, values in used) for i in range(n)]


def stable_order(scores: Sequence[float], keys: Sequence[str]) -> list[int]:
    """Indices by score descending, ties by key ascending: the same order on every run.

    NaN compares false both ways and would leave the order to the input, so it sorts last.
    """
    if len(scores) != len(keys):
        raise ValueError(f"{len(scores)} scores for {len(keys)} keys")
    return sorted(
        range(len(scores)),
        key=lambda i: (1, 0.0, keys[i]) if math.isnan(scores[i]) else (0, -scores[i], keys[i]),
    )


def reciprocal_ranks(scores: Sequence[float | None], keys: Sequence[str], k: int) -> list[float]:
    """1 / (k + rank) of each present score, ranks from 1 in `stable_order`; missing ones get 0.0.

    Rank fusion ignores how far apart scores are, only their order: the alternative to `minmax`
    that does not let one outlying top score squash the rest of a pool.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    present = [i for i, s in enumerate(scores) if s is not None]
    order = stable_order([scores[i] or 0.0 for i in present], [keys[i] for i in present])
    out = [0.0] * len(scores)
    for rank, j in enumerate(order, start=1):
        out[present[j]] = 1.0 / (k + rank)
    return out


def with_siblings(scores: Sequence[float], groups: Sequence[str], weight: float) -> list[float]:
    """Each score plus `weight` times the sum of the other scores of its group (its document).

    Results are ranked by a document's best chunk; this lets a document whose other chunks
    also matched edge past one with a single matching chunk. weight 0 changes nothing.
    """
    if len(scores) != len(groups):
        raise ValueError(f"{len(scores)} scores for {len(groups)} groups")
    if weight == 0.0:
        return list(scores)
    totals: dict[str, list[float]] = {}
    for s, g in zip(scores, groups, strict=True):
        totals.setdefault(g, []).append(s)
    sums = {g: math.fsum(values) for g, values in totals.items()}
    return [s + weight * (sums[g] - s) for s, g in zip(scores, groups, strict=True)]
