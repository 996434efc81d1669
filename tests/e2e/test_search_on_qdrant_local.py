"""The whole search API suite again, served with QDRANT_URL=:memory: (the cluster adapter over
qdrant-client's local mode) instead of the embedded Edge index."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import loaded_server
from tests.e2e.server import Server
from tests.e2e.test_search_api import (
    test_bm25_mode_returns_only_term_matches,
    test_diversity_changes_the_selection,
    test_every_mode_finds_the_matching_document,
    test_filter_any_of,
    test_filter_exact_match,
    test_filter_numeric_range,
    test_filter_with_no_match_gives_no_results,
    test_health_ready_and_openapi,
    test_markdown_sections_are_kept,
    test_min_score_is_a_cosine_floor,
    test_reingesting_unchanged_text_is_a_no_op,
    test_rerank_on_request_reports_the_stage,
    test_same_query_same_ranking,
    test_scores_are_ordered_and_bounded,
    test_stats_count_documents_and_chunks,
    test_update_replaces_old_chunks_and_delete_removes,
)

__all__ = [
    "test_bm25_mode_returns_only_term_matches",
    "test_diversity_changes_the_selection",
    "test_every_mode_finds_the_matching_document",
    "test_filter_any_of",
    "test_filter_exact_match",
    "test_filter_numeric_range",
    "test_filter_with_no_match_gives_no_results",
    "test_health_ready_and_openapi",
    "test_markdown_sections_are_kept",
    "test_min_score_is_a_cosine_floor",
    "test_reingesting_unchanged_text_is_a_no_op",
    "test_rerank_on_request_reports_the_stage",
    "test_same_query_same_ranking",
    "test_scores_are_ordered_and_bounded",
    "test_stats_count_documents_and_chunks",
    "test_update_replaces_old_chunks_and_delete_removes",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Overrides the shared Edge-backed server for this module's tests."""
    data_dir = tmp_path_factory.mktemp("e2e-qdrant") / "data"
    yield from loaded_server(data_dir, env={"QDRANT_URL": ":memory:"})


def test_the_index_is_not_the_embedded_one(server: Server) -> None:
    # Edge would have made its shard and single-writer lock here.
    assert not (server.data_dir / "index").exists()
    assert "alias rag_" in server.log.read_text()
