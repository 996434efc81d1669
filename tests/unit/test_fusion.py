"""Unit tests of score normalisation, weighted and reciprocal-rank fusion, sibling chunks and
stable order."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain.records import Hit
from app.retrieval.fusion import (
    minmax,
    reciprocal_ranks,
    stable_order,
    weighted_sum,
    with_siblings,
)
from app.services.query import FusionWeights, fuse

# --- minmax ----------------------------------------------------------------------------------


def test_minmax_scales_to_unit_interval() -> None:
    assert minmax([2.0, 4.0, 3.0, 6.0]) == [0.0, 0.5, 0.25, 1.0]


def test_minmax_missing_scores_get_zero() -> None:
    assert minmax([None, 10.0, 5.0, None, 0.0]) == [0.0, 1.0, 0.5, 0.0, 0.0]


def test_minmax_all_equal_present_get_one() -> None:
    assert minmax([3.0, None, 3.0]) == [1.0, 0.0, 1.0]
    assert minmax([-7.5]) == [1.0]


def test_minmax_edge_inputs() -> None:
    assert minmax([]) == []
    assert minmax([None, None]) == [0.0, 0.0]


@given(st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6)), min_size=1, max_size=30))
def test_minmax_keeps_order_and_bounds(scores: list[float | None]) -> None:
    out = minmax(scores)
    assert len(out) == len(scores)
    assert all(0.0 <= v <= 1.0 for v in out)
    present = sorted((s, v) for s, v in zip(scores, out, strict=True) if s is not None)
    assert [v for _, v in present] == sorted(v for _, v in present)  # monotone
    if present:
        assert present[-1][1] == 1.0


# --- weighted_sum ----------------------------------------------------------------------------


def test_weighted_sum_values() -> None:
    got = weighted_sum(
        {"dense": [1.0, 0.5, 0.0], "bm25": [0.0, 1.0, 0.5]},
        {"dense": 0.7, "bm25": 0.3},
    )
    assert got == pytest.approx([0.7, 0.65, 0.15])


def test_weighted_sum_ignores_unweighted_components_and_zero_weights() -> None:
    got = weighted_sum({"dense": [1.0, 2.0], "late": [100.0, 200.0]}, {"dense": 2.0, "rrf": 0.0})
    assert got == [2.0, 4.0]


def test_weighted_sum_rejects_a_weighted_component_that_is_missing() -> None:
    with pytest.raises(ValueError, match="bm52"):
        weighted_sum({"dense": [1.0], "bm25": [1.0]}, {"dense": 0.5, "bm52": 0.5})


def test_weighted_sum_rejects_ragged_components() -> None:
    with pytest.raises(ValueError, match="length"):
        weighted_sum({"dense": [1.0, 2.0], "bm25": [1.0]}, {"dense": 1.0, "bm25": 1.0})


def test_weighted_sum_empty() -> None:
    assert weighted_sum({}, {}) == []
    assert weighted_sum({"dense": []}, {"dense": 1.0}) == []


def test_weighted_sum_does_not_depend_on_name_order() -> None:
    rng = random.Random(7)
    names = [f"c{i}" for i in range(6)]
    components = {
        n: [rng.uniform(-1, 1) * 10 ** rng.randint(-8, 8) for _ in range(50)] for n in names
    }
    weights = {n: rng.uniform(0, 1) for n in names}
    forward = weighted_sum(components, weights)
    backward = weighted_sum(dict(reversed(components.items())), dict(reversed(weights.items())))
    assert forward == backward  # bit for bit


# --- stable_order ----------------------------------------------------------------------------


def test_stable_order_by_score_then_key() -> None:
    scores = [0.5, 0.9, 0.5, 0.1, 0.9]
    keys = ["d", "z", "a", "b", "c"]
    assert stable_order(scores, keys) == [4, 1, 2, 0, 3]


def test_stable_order_is_independent_of_input_order() -> None:
    rng = random.Random(3)
    scores = [float(rng.randint(0, 4)) for _ in range(40)]
    keys = [f"k{i:02d}" for i in range(40)]
    expected = [keys[i] for i in stable_order(scores, keys)]
    perm = list(range(40))
    rng.shuffle(perm)
    shuffled = [
        keys[perm[i]] for i in stable_order([scores[p] for p in perm], [keys[p] for p in perm])
    ]
    assert shuffled == expected


def test_stable_order_puts_nan_last() -> None:
    scores = [math.nan, 1.0, -math.inf, 2.0, math.nan]
    assert stable_order(scores, ["e", "b", "c", "d", "a"]) == [3, 1, 2, 4, 0]


def test_stable_order_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError):
        stable_order([1.0], ["a", "b"])


# --- reciprocal_ranks ------------------------------------------------------------------------


def test_reciprocal_ranks_follow_score_order_and_skip_missing() -> None:
    got = reciprocal_ranks([0.2, None, 0.9, 0.5], ["a", "b", "c", "d"], k=10)
    assert got == [1 / 13, 0.0, 1 / 11, 1 / 12]


def test_reciprocal_ranks_break_ties_by_key() -> None:
    assert reciprocal_ranks([1.0, 1.0], ["b", "a"], k=0) == [1 / 2, 1 / 1]


def test_reciprocal_ranks_ignore_the_spread_of_scores() -> None:
    keys = ["a", "b", "c"]
    assert reciprocal_ranks([100.0, 1.0, 0.9], keys, 60) == reciprocal_ranks(
        [0.3, 0.2, 0.1], keys, 60
    )


def test_reciprocal_ranks_edge_inputs() -> None:
    assert reciprocal_ranks([], [], 60) == []
    assert reciprocal_ranks([None], ["a"], 60) == [0.0]
    with pytest.raises(ValueError):
        reciprocal_ranks([1.0], ["a"], -1)


# --- with_siblings ---------------------------------------------------------------------------


def test_with_siblings_adds_a_share_of_the_other_chunks_of_the_document() -> None:
    got = with_siblings([0.9, 0.8, 0.5, 0.4], ["x", "y", "y", "z"], 0.1)
    assert got == pytest.approx([0.9, 0.85, 0.58, 0.4])


def test_with_siblings_lets_a_document_with_two_matches_pass_one_with_one() -> None:
    scores, docs = [0.9, 0.85, 0.8], ["single", "pair", "pair"]
    assert stable_order(scores, docs)[0] == 0
    assert stable_order(with_siblings(scores, docs, 0.1), docs)[0] == 1


def test_with_siblings_zero_weight_changes_nothing() -> None:
    assert with_siblings([0.3, 0.2], ["a", "a"], 0.0) == [0.3, 0.2]
    with pytest.raises(ValueError):
        with_siblings([0.3], ["a", "b"], 0.1)


# --- fuse ------------------------------------------------------------------------------------


def _hits() -> list[Hit]:
    return [
        Hit(chunk_id="c1", dense=0.9, bm25=None, doc_id="d1"),
        Hit(chunk_id="c2", dense=0.5, bm25=12.0, doc_id="d2"),
        Hit(chunk_id="c3", dense=0.4, bm25=11.0, doc_id="d2"),
        Hit(chunk_id="c4", dense=0.1, bm25=2.0, doc_id="d3"),
    ]


def test_fuse_by_reciprocal_ranks() -> None:
    weights = FusionWeights(dense=0.5, bm25=0.5, normalise="rrf", rrf_k=0)
    fused = {h.chunk_id: h.score for h in fuse(_hits(), "hybrid", weights)}
    assert fused == pytest.approx(
        {"c1": 0.5 / 1, "c2": 0.5 / 2 + 0.5 / 1, "c3": 0.5 / 3 + 0.5 / 2, "c4": 0.5 / 4 + 0.5 / 3}
    )


def test_fuse_with_siblings_moves_a_document_with_two_matching_chunks_up() -> None:
    hits = _hits()
    hits[0].dense = 0.6  # min-max dense: c1 1.0, c2 0.8, c3 0.6, c4 0.0
    plain = fuse(hits, "dense", FusionWeights())
    assert [h.chunk_id for h in plain][:2] == ["c1", "c2"]
    assert plain[0].score == 1.0
    together = fuse(hits, "dense", FusionWeights(siblings=0.5))
    assert [h.chunk_id for h in together][:2] == ["c2", "c1"]
    c2 = next(h for h in together if h.chunk_id == "c2")
    assert c2.score == pytest.approx(0.8 + 0.5 * 0.6)
    assert c2.scores["fusion"] == c2.score
