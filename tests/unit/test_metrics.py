"""Unit tests of the ranking metrics against values worked out by hand."""

from __future__ import annotations

import pytest

from app.retrieval.metrics import dedupe, mrr_at_k, ndcg_at_k, recall_at_k

# log2 values used below: log2(2) = 1, log2(3) = 1.5849625, log2(4) = 2, log2(5) = 2.3219281


def test_ndcg_binary_relevance() -> None:
    # Relevant d1, d2 at ranks 2 and 3:
    #   DCG  = 1/log2(3) + 1/log2(4) = 0.6309298 + 0.5        = 1.1309298
    #   IDCG = 1/log2(2) + 1/log2(3) = 1       + 0.6309298    = 1.6309298
    #   nDCG = 1.1309298 / 1.6309298                          = 0.6934264
    got = ndcg_at_k(["x", "d1", "d2", "y"], {"d1": 1, "d2": 1}, k=10)
    assert got == pytest.approx(0.6934264, abs=1e-7)


def test_ndcg_graded_relevance() -> None:
    # Grades a=3, b=2, c=1; ranking [c, x, a, b]:
    #   DCG  = 1/log2(2) + 0 + 3/log2(4) + 2/log2(5) = 1 + 1.5 + 0.8613531        = 3.3613531
    #   IDCG = 3/log2(2) + 2/log2(3) + 1/log2(4)     = 3 + 1.2618595 + 0.5        = 4.7618595
    #   nDCG = 3.3613531 / 4.7618595                                              = 0.7058909
    got = ndcg_at_k(["c", "x", "a", "b"], {"a": 3, "b": 2, "c": 1}, k=10)
    assert got == pytest.approx(0.7058909, abs=1e-7)


def test_ndcg_cutoff_applies_to_ranking_and_ideal() -> None:
    # k=2, grades a=3, b=2, c=1; ranking [b, c, a]: a falls outside the cutoff.
    #   DCG  = 2/log2(2) + 1/log2(3) = 2 + 0.6309298 = 2.6309298
    #   IDCG = 3/log2(2) + 2/log2(3) = 3 + 1.2618595 = 4.2618595  (only the best two grades)
    #   nDCG = 2.6309298 / 4.2618595                 = 0.6173197
    got = ndcg_at_k(["b", "c", "a"], {"a": 3, "b": 2, "c": 1}, k=2)
    assert got == pytest.approx(0.6173197, abs=1e-7)


def test_ndcg_perfect_and_empty() -> None:
    relevant = {"a": 2, "b": 1}
    assert ndcg_at_k(["a", "b", "z"], relevant) == 1.0
    assert ndcg_at_k([], relevant) == 0.0
    assert ndcg_at_k(["a"], {}) == 0.0  # nothing relevant: 0, not a division by zero
    assert ndcg_at_k(["a"], {"a": 0, "b": -1}) == 0.0  # grades <= 0 are not relevant


def test_ndcg_counts_a_repeated_id_once() -> None:
    # [a, a, b]: the second a earns nothing, so b's gain is discounted at rank 3.
    #   DCG  = 1/log2(2) + 0 + 1/log2(4) = 1.5;  IDCG = 1 + 1/log2(3) = 1.6309298
    got = ndcg_at_k(["a", "a", "b"], {"a": 1, "b": 1})
    assert got == pytest.approx(1.5 / 1.6309298, abs=1e-7)
    assert ndcg_at_k(["a", "a", "a"], {"a": 1}) == 1.0


def test_recall() -> None:
    relevant = {"a": 1, "b": 2, "c": 1, "n": 0}
    assert recall_at_k(["a", "x", "c", "b"], relevant, k=3) == pytest.approx(2 / 3)
    assert recall_at_k(["a", "x", "c", "b"], relevant, k=100) == 1.0
    assert recall_at_k(["n", "a", "a"], relevant, k=100) == pytest.approx(1 / 3)
    assert recall_at_k(["a"], {"a": 0}) == 0.0


def test_mrr() -> None:
    relevant = {"b": 1, "c": 2}
    assert mrr_at_k(["x", "b", "c"], relevant) == 0.5
    assert mrr_at_k(["c"], relevant) == 1.0
    assert mrr_at_k(["x", "y", "b"], relevant, k=2) == 0.0
    assert mrr_at_k([], relevant) == 0.0


@pytest.mark.parametrize("metric", [ndcg_at_k, recall_at_k, mrr_at_k])
def test_k_must_be_positive(metric: object) -> None:
    with pytest.raises(ValueError):
        metric(["a"], {"a": 1}, k=0)  # type: ignore[operator]


def test_dedupe_keeps_first_occurrence() -> None:
    assert dedupe(["d2", "d1", "d2", "d3", "d1"]) == ["d2", "d1", "d3"]
    assert dedupe([]) == []
