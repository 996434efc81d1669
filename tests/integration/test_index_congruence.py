"""Congruence of the two index adapters: the same SciFact documents, embedded once by the local
model, written to Qdrant Edge and to the cluster adapter (qdrant-client local mode); the same
queries through the Pipeline give the same top 10 in dense, bm25 and hybrid mode.

Ties: the pipeline's scores are min-max normalised floats computed by two engines, so equal
scores may come out a few ulps apart and order differently. Two rankings are congruent when
(1) rank by rank their scores agree within EPS; (2) two results both rank in the other order
only if their scores are within EPS of each other; (3) a result in one top 10 but not the
other scores within EPS of that top 10's last score (a tie at the cut).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from pathlib import Path

import pytest

from app.adapters.embedders.local import LocalEmbedder
from app.adapters.qdrant.edge_index import EdgeIndex
from app.adapters.qdrant.remote_index import QdrantIndex
from app.adapters.qdrant.sparse_bm25 import SparseBm25
from app.cli.corpus import read_beir_corpus, read_beir_queries
from app.domain.records import Chunk, ChunkingParams, DocumentIn, Hit, IndexedChunk, SearchMode
from app.services.indexing import Indexer, document_version
from app.services.query import Pipeline, PipelineConfig, SearchParams

pytestmark = pytest.mark.slow

DOCS = 200
QUERIES = 40
TOP = 10
EPS = 1e-4
MODES: tuple[SearchMode, ...] = ("dense", "bm25", "hybrid")

Ranked = list[tuple[str, float]]  # (chunk id, fused score), best first


class FanOut:
    """Writes each batch to every index given, so the documents are embedded once."""

    def __init__(self, *indexes: EdgeIndex | QdrantIndex) -> None:
        self.indexes = indexes

    async def write(self, embedder: LocalEmbedder, chunks: Sequence[Chunk]) -> None:
        """Embed the chunks in batches and upsert each batch to every index."""
        for start in range(0, len(chunks), 256):
            batch = chunks[start : start + 256]
            encoded = await embedder.embed_documents([c.embed_text for c in batch])
            signatures = encoded.token_signatures
            items = [
                IndexedChunk(
                    chunk=chunk,
                    vector=encoded.vectors[i],
                    token_signature=None if signatures is None else signatures[i],
                )
                for i, chunk in enumerate(batch)
            ]
            for index in self.indexes:
                await index.upsert(items)


def planned_sample(
    scifact: Path, docs: int, embedder: LocalEmbedder
) -> tuple[list[DocumentIn], list[Chunk], float]:
    """The first `docs` SciFact documents, their chunks as tenant "t"'s, and the chunks' mean
    BM25 length.

    Edge normalises BM25 by the live mean length; the cluster adapter by the one its
    collection was made with: give it this corpus's, as a replay that measured it would.
    """
    sample = [
        DocumentIn(id=d.id, title=d.title, text=d.text)
        for d in itertools.islice(read_beir_corpus(scifact / "corpus.jsonl"), docs)
    ]
    chunking = ChunkingParams(size=256, overlap=32)
    planner = Indexer(embedder, None)  # type: ignore[arg-type]
    chunks = [
        c for d in sample for c in planner.plan("t", d, document_version(d, chunking), chunking)
    ]
    counter = SparseBm25()
    return sample, chunks, sum(counter.token_count(c.embed_text) for c in chunks) / len(chunks)


@pytest.fixture(scope="module")
def rankings(
    scifact: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[SearchMode, str], tuple[Ranked, Ranked]]:
    embedder = LocalEmbedder(batch_size=32, max_concurrent_batches=1, threads=0)
    queries = dict(itertools.islice(read_beir_queries(scifact / "queries.jsonl").items(), QUERIES))
    _, chunks, mean_len = planned_sample(scifact, DOCS, embedder)
    config = PipelineConfig(
        default_top_k=TOP,
        default_min_score=-1.0,
        rerank_by_default=False,
        rerank_top_k=30,
        mmr_max_candidates=100,
    )

    async def go() -> dict[tuple[SearchMode, str], tuple[Ranked, Ranked]]:
        edge = EdgeIndex(tmp_path_factory.mktemp("congruence"), model_id="m", dim=embedder.dim)
        cluster = QdrantIndex.connect(
            ":memory:", model_id="m", dim=embedder.dim, bm25_avg_len=mean_len
        )
        try:
            await FanOut(edge, cluster).write(embedder, chunks)
            assert (await edge.stats()).points == (await cluster.stats()).points == len(chunks)
            pipelines = [Pipeline(embedder, index, None, config) for index in (edge, cluster)]
            out: dict[tuple[SearchMode, str], tuple[Ranked, Ranked]] = {}
            for (qid, text), mode in itertools.product(queries.items(), MODES):
                # a few past the cut, to tell a tie at the cut from a difference
                params = SearchParams(query=text, tenant="t", top_k=TOP + 5, mode=mode)
                a, b = [_ranked((await p.search(params)).hits) for p in pipelines]
                out[(mode, qid)] = (a, b)
            return out
        finally:
            edge.close()
            await cluster.aclose()
            embedder.close()

    return asyncio.run(go())


def _ranked(hits: list[Hit]) -> Ranked:
    return [(h.chunk_id, h.score) for h in hits]


def assert_congruent(a: Ranked, b: Ranked) -> None:
    top_a, top_b = a[:TOP], b[:TOP]
    assert len(top_a) == len(top_b)
    for rank, ((_, sa), (_, sb)) in enumerate(zip(top_a, top_b, strict=True)):
        assert abs(sa - sb) <= EPS, f"rank {rank}: {sa} vs {sb}"
    for mine, theirs in ((top_a, top_b), (top_b, top_a)):
        score = dict(mine)
        other = {cid for cid, _ in theirs}
        for cid, s in mine:
            if cid not in other:
                assert abs(s - mine[-1][1]) <= EPS, f"{cid} ({s}) is missing, not tied at the cut"
        shared = [cid for cid, _ in theirs if cid in score]
        for x, y in itertools.pairwise(shared):
            assert score[x] >= score[y] - EPS, f"{x} and {y} swapped without a tie"


@pytest.mark.parametrize("mode", MODES)
def test_same_top_10_in_every_mode(
    rankings: dict[tuple[SearchMode, str], tuple[Ranked, Ranked]], mode: SearchMode
) -> None:
    compared = 0
    for (m, qid), (edge, cluster) in rankings.items():
        if m != mode:
            continue
        try:
            assert_congruent(edge, cluster)
        except AssertionError as exc:
            raise AssertionError(
                f"query {qid}, {mode}: {exc}\nedge {edge}\ncluster {cluster}"
            ) from None
        compared += bool(edge)
    assert compared >= QUERIES * 0.9  # nearly every query has results to compare


def test_the_tie_rule_is_not_vacuous() -> None:
    a = [("x", 1.0), ("y", 0.5), ("z", 0.2)]
    assert_congruent(a, [("x", 1.0), ("y", 0.5), ("z", 0.2)])
    with pytest.raises(AssertionError):
        assert_congruent(a, [("y", 1.0), ("x", 0.5), ("z", 0.2)])
    with pytest.raises(AssertionError):
        assert_congruent(a, [("x", 1.0), ("w", 0.5), ("y", 0.2)])  # w is no tie at the cut
    with pytest.raises(AssertionError):
        assert_congruent(a, [("x", 1.0), ("y", 0.4), ("z", 0.2)])
    # z and w tie at the cut: either may be the one returned
    assert_congruent(a, [("x", 1.0), ("y", 0.5), ("w", 0.2)])
    assert_congruent([("x", 1.0), ("y", 0.5), ("z", 0.5)], [("x", 1.0), ("z", 0.5), ("y", 0.5)])
