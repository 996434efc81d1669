"""Maximal marginal relevance: pick results that are relevant and unlike those already picked."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def mmr_select(
    relevance: npt.NDArray[np.float32],
    vectors: npt.NDArray[np.float32],
    k: int,
    diversity: float,
) -> list[int]:
    """Indices of up to k candidates, chosen greedily by MMR.

    Each step picks the candidate maximising
    (1 - diversity) * relevance[i] - diversity * max cosine(i, already picked),
    with the penalty 0 while nothing is picked; ties go to the lower index. Rows of `vectors`
    must be L2-normalised so dot products are cosines. O(k * n * dim): one matrix-vector
    product per pick updates a running maximum similarity.
    """
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must be in [0, 1], got {diversity}")
    n = relevance.shape[0]
    if relevance.ndim != 1 or vectors.ndim != 2 or vectors.shape[0] != n:
        raise ValueError(
            f"need relevance (n,) and vectors (n, dim), got {relevance.shape} and {vectors.shape}"
        )
    k = min(k, n)
    if k <= 0:
        return []
    # float64 so near-ties resolve the same way as an exact computation would.
    gain = (1.0 - diversity) * relevance.astype(np.float64)
    vecs = vectors.astype(np.float64)
    max_sim = np.full(n, -np.inf)
    available = np.ones(n, dtype=bool)
    picked: list[int] = []
    score = gain.copy()
    for _ in range(k):
        # Indices ascend and argmax returns the first maximum: the lower-index tie-break.
        # (Masking picked scores with -inf instead would re-pick when all left are -inf.)
        candidates = np.flatnonzero(available)
        best = int(candidates[np.argmax(score[candidates])])
        picked.append(best)
        available[best] = False
        np.maximum(max_sim, vecs @ vecs[best], out=max_sim)
        score = gain - diversity * max_sim
    return picked
