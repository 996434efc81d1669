"""Ranking metrics for evaluation: nDCG, recall and MRR at a cutoff, over document ids."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

# Conventions follow trec_eval as BEIR uses it: gains are the graded judgements themselves
# (linear, not 2^rel - 1), a judgement <= 0 is not relevant, and a query with no relevant
# document scores 0.0. An id repeated in `ranked` earns its gain only at its first rank (run
# `dedupe` first when chunk hits map to document ids), so no metric can exceed 1.


def dedupe(ranked: Sequence[str]) -> list[str]:
    """The ids in order, each kept at its first occurrence."""
    return list(dict.fromkeys(ranked))


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    """Normalised discounted cumulative gain of the top k, discount log2(rank + 1)."""
    _check(k)
    seen: set[str] = set()
    dcg = 0.0
    for i, doc in enumerate(ranked[:k]):
        if doc in seen:
            continue
        seen.add(doc)
        gain = relevant.get(doc, 0)
        if gain > 0:
            dcg += gain / math.log2(i + 2)
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 100) -> float:
    """Share of the relevant documents found in the top k."""
    _check(k)
    wanted = {doc for doc, g in relevant.items() if g > 0}
    if not wanted:
        return 0.0
    return len(wanted.intersection(ranked[:k])) / len(wanted)


def mrr_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    """Reciprocal rank of the first relevant document in the top k, else 0."""
    _check(k)
    for i, doc in enumerate(ranked[:k]):
        if relevant.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def _check(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
