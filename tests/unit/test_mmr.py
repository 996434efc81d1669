"""Unit tests of mmr_select against a brute-force reference and on edge cases."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from app.retrieval.mmr import mmr_select


def reference(relevance: list[float], vectors: list[list[float]], k: int, d: float) -> list[int]:
    """MMR as the formula reads, in plain Python."""
    picked: list[int] = []
    while len(picked) < min(k, len(relevance)):
        best, best_score = -1, -float("inf")
        for i in range(len(relevance)):
            if i in picked:
                continue
            penalty = max(
                (sum(a * b for a, b in zip(vectors[i], vectors[j], strict=True)) for j in picked),
                default=0.0,
            )
            score = (1 - d) * relevance[i] - d * penalty
            if score > best_score:  # strict: the first (lowest) index wins ties
                best, best_score = i, score
        picked.append(best)
    return picked


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> npt.NDArray[np.float32]:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    rows: npt.NDArray[np.float32] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(
        np.float32
    )
    return rows


@pytest.mark.parametrize("seed", range(60))
def test_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    dim = int(rng.integers(2, 12))
    vectors = unit_rows(rng, n, dim)
    relevance = rng.uniform(-1, 1, n).astype(np.float32)
    k = int(rng.integers(1, n + 3))
    diversity = float(rng.choice([0.0, 0.1, 0.3, 0.5, 0.7, 1.0, rng.uniform()]))
    got = mmr_select(relevance, vectors, k, diversity)
    want = reference(relevance.astype(float).tolist(), vectors.astype(float).tolist(), k, diversity)
    assert got == want


def test_zero_diversity_is_relevance_order_with_index_ties() -> None:
    rng = np.random.default_rng(0)
    relevance = np.array([0.2, 0.9, 0.5, 0.9, 0.1], dtype=np.float32)
    assert mmr_select(relevance, unit_rows(rng, 5, 4), 5, 0.0) == [1, 3, 2, 0, 4]


def test_diversity_skips_a_near_duplicate() -> None:
    vectors = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)  # 0 and 1 identical
    relevance = np.array([0.9, 0.85, 0.5], dtype=np.float32)
    # Second pick: candidate 1 scores 0.5*0.85 - 0.5*1 = -0.075, candidate 2 scores
    # 0.5*0.5 - 0.5*0 = 0.25.
    assert mmr_select(relevance, vectors, 2, 0.5) == [0, 2]
    assert mmr_select(relevance, vectors, 2, 0.0) == [0, 1]


def test_full_diversity_ignores_relevance() -> None:
    vectors = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], dtype=np.float32)
    relevance = np.array([0.1, 0.9, 0.8, 0.0], dtype=np.float32)
    # Nothing picked: every penalty is 0, so index 0 wins the tie; then the least similar
    # to 0 is 3 (cos -1); then 2 (max cos 0 beats 1's 0.8).
    assert mmr_select(relevance, vectors, 4, 1.0) == [0, 3, 2, 1]


def test_k_larger_than_n_returns_every_index_once() -> None:
    rng = np.random.default_rng(1)
    got = mmr_select(rng.uniform(size=4).astype(np.float32), unit_rows(rng, 4, 3), 10, 0.5)
    assert sorted(got) == [0, 1, 2, 3]


def test_empty_and_zero_k() -> None:
    empty = np.zeros((0, 8), dtype=np.float32)
    assert mmr_select(np.zeros(0, dtype=np.float32), empty, 5, 0.5) == []
    rng = np.random.default_rng(2)
    assert mmr_select(np.ones(3, dtype=np.float32), unit_rows(rng, 3, 8), 0, 0.5) == []


def test_all_minus_infinity_relevance_still_picks_distinct_indices() -> None:
    relevance = np.full(3, -np.inf, dtype=np.float32)
    rng = np.random.default_rng(3)
    assert mmr_select(relevance, unit_rows(rng, 3, 4), 3, 0.0) == [0, 1, 2]


@pytest.mark.parametrize("diversity", [-0.1, 1.5])
def test_rejects_diversity_out_of_range(diversity: float) -> None:
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError):
        mmr_select(np.ones(2, dtype=np.float32), unit_rows(rng, 2, 4), 1, diversity)


def test_rejects_mismatched_shapes() -> None:
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError):
        mmr_select(np.ones(3, dtype=np.float32), unit_rows(rng, 2, 4), 1, 0.5)
