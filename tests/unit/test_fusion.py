"""Unit tests of score normalisation, weighted and reciprocal-rank fusion, and stable order."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.retrieval.fusion import minmax, stable_order, weighted_sum

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
