"""A replay on a Qdrant cluster (qdrant-client's local mode) measures the mean BM25 length of
what it writes and builds the generation with it, so the cluster's BM25 scores agree with the
ones Edge computes from its live statistics; Edge's catalog never reads the corpus."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import msgspec
import numpy as np
import pytest

from app.adapters.embedders.local import LocalEmbedder
from app.adapters.qdrant.edge_catalog import EdgeCatalog
from app.adapters.qdrant.payload import SEARCH_TEXT
from app.adapters.qdrant.remote_catalog import QdrantCatalog
from app.adapters.qdrant.remote_collection import SPARSE
from app.adapters.qdrant.remote_index import QdrantIndex
from app.adapters.qdrant.sparse_bm25 import DEFAULT_AVG_LEN, SparseBm25
from app.adapters.redis.client import RedisTarget
from app.domain.events import DocumentDeleted, DocumentUpserted, Streams
from app.domain.records import Chunk, Hit, IndexQuery
from app.ports import VectorIndex
from app.services.projector import Projector
from tests.integration.projector_driver import start as start_projector
from tests.integration.redis_fixtures import ALL_BACKENDS
from tests.integration.test_index_contract import make_chunk
from tests.integration.test_replay import embedder, replay_of, unwire, wire

pytest_plugins = ("tests.integration.redis_fixtures",)
REDIS_BACKENDS = ALL_BACKENDS

__all__ = ["embedder"]  # the module-scoped fixture, shared with test_replay

WORDS = [
    "protein",
    "cell",
    "tumor",
    "gene",
    "receptor",
    "insulin",
    "neuron",
    "cortex",
    "mouse",
    "patient",
    "therapy",
    "dose",
    "vaccine",
    "virus",
    "antibody",
    "kinase",
    "membrane",
    "enzyme",
    "plasma",
    "liver",
    "kidney",
    "muscle",
    "bone",
    "signal",
    "pathway",
    "mutation",
    "lesion",
    "infection",
    "marker",
    "trial",
    "cohort",
]
QUERIES = ["protein receptor", "tumor mutation", "insulin liver", "virus antibody vaccine"]


def upserted(tenant: str, doc_id: str, text: str, *, chunk_size: int) -> DocumentUpserted:
    return DocumentUpserted(
        tenant=tenant,
        doc_id=doc_id,
        version=f"v-{abs(hash((text, chunk_size)))}",
        title="",
        text=text,
        metadata={},
        chunk_size=chunk_size,
        chunk_overlap=0,
        at=time.time(),
        traceparent=None,
    )


def prose(rng: random.Random, sentences: int) -> str:
    return " ".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))).capitalize() + "."
        for _ in range(sentences)
    )


def corpus() -> list[DocumentUpserted | DocumentDeleted]:
    """Short chunks (24 embedder tokens, far below SciFact's 88 BM25 tokens), behind older
    versions and a deleted document whose chunks are long: a replay that measured anything
    but each live document's newest version would be far off. One document is all stop
    words: it gets no sparse vector, and counts in no mean."""
    rng = random.Random(7)
    events: list[DocumentUpserted | DocumentDeleted] = []
    for i in range(4):
        events.append(upserted("acme", f"r{i}", prose(rng, 30), chunk_size=256))
    events.append(upserted("acme", "gone", prose(rng, 40), chunk_size=256))
    for i in range(16):
        events.append(upserted("acme", f"d{i}", prose(rng, rng.randint(1, 6)), chunk_size=24))
    for i in range(4):
        events.append(upserted("acme", f"r{i}", prose(rng, 3), chunk_size=24))
    events.append(DocumentDeleted(tenant="acme", doc_id="gone", at=0, traceparent=None))
    events.append(upserted("acme", "stop", "The and of it was, and it is.", chunk_size=24))
    events.append(upserted("other", "o1", prose(rng, 4), chunk_size=24))
    return events


async def bm25_scores(index: VectorIndex, dim: int) -> dict[tuple[str, str], float]:
    """(query, chunk id) -> BM25 score, every candidate of every query."""
    vector = np.zeros(dim, np.float32)
    vector[0] = 1.0
    out: dict[tuple[str, str], float] = {}
    for text in QUERIES:
        hits: list[Hit] = await index.retrieve(
            IndexQuery(tenant="acme", text=text, vector=vector, limit=500, dense=False, bm25=True)
        )
        out.update({(text, h.chunk_id): h.bm25 for h in hits if h.bm25 is not None})
    return out


def worst_relative_gap(a: dict[tuple[str, str], float], b: dict[tuple[str, str], float]) -> float:
    assert a.keys() == b.keys() and a
    return max(abs(a[k] - b[k]) / b[k] for k in a)


@pytest.mark.anyio
async def test_a_cluster_replay_builds_with_the_measured_mean_length(
    redis_target: RedisTarget, prefix: str, embedder: LocalEmbedder, tmp_path: Path
) -> None:
    cluster = QdrantIndex.connect(":memory:", model_id=embedder.model_id, dim=embedder.dim)
    catalog = QdrantCatalog(cluster)
    parts = wire(catalog, redis_target, prefix, embedder)
    edge_catalog = EdgeCatalog(tmp_path, model_id=embedder.model_id, dim=embedder.dim)
    edge_parts = wire(edge_catalog, redis_target, prefix, embedder)
    live: Projector = parts["live"]
    streams: Streams = parts["streams"]
    try:
        for event in corpus():
            await parts["event_log"].append(streams.documents, event)
        await start_projector(live)
        while await live.step():
            pass
        # The live projector's first use made a generation with the default: nothing to
        # measure yet.
        first = await catalog.current_generation()
        assert first is not None
        assert await bm25_avg_len(cluster, first) == DEFAULT_AVG_LEN
        with_default = await bm25_scores(cluster, embedder.dim)

        done = await replay_of(parts, embedder).run()
        assert done.phase == "done" and done.failed == 0
        assert done.generation is not None and done.generation != first

        # What the replay wrote, measured here from the points themselves.
        counter = SparseBm25()
        points = await cluster.all_points()
        assert {p["doc_id"] for _, p, _ in points} == {f"d{i}" for i in range(16)} | {
            "r0",
            "r1",
            "r2",
            "r3",
            "stop",
            "o1",
        }
        lengths = [counter.token_count(p[SEARCH_TEXT]) for _, p, _ in points]
        assert 0 in lengths  # the stop-word chunk is written, and left out of the mean
        measured = sum(lengths) / sum(1 for n in lengths if n)
        stored = await bm25_avg_len(cluster, done.generation)
        assert stored == pytest.approx(measured, rel=1e-12)
        assert stored < DEFAULT_AVG_LEN / 3

        # Edge, rebuilt from the same stream, normalises by its live mean: the same scores.
        assert (await replay_of(edge_parts, embedder).run()).phase == "done"
        edge = await bm25_scores(edge_catalog.current(), embedder.dim)
        with_measured = await bm25_scores(cluster, embedder.dim)
        gap_measured = worst_relative_gap(with_measured, edge)
        gap_default = worst_relative_gap(with_default, edge)
        assert gap_measured < 1e-4
        assert gap_default > 0.1

        # The live projector, writing through the alias after the swap, normalises as the
        # new generation was built to, not as the generation it first opened was.
        await parts["event_log"].append(
            streams.documents, upserted("acme", "late", "Protein kinase signal.", chunk_size=24)
        )
        assert await live.step() == 1
        (late,) = [(pid, p) for pid, p, _ in await cluster.all_points() if p["doc_id"] == "late"]
        (record,) = await cluster.client.retrieve(cluster.alias, [late[0]], with_vectors=[SPARSE])
        assert isinstance(record.vector, dict)
        written = record.vector[SPARSE]
        indices, values = SparseBm25(stored).document(late[1][SEARCH_TEXT])
        assert dict(zip(written.indices, written.values, strict=True)) == pytest.approx(  # type: ignore[union-attr]
            dict(zip(indices, values, strict=True)), rel=1e-6
        )
    finally:
        await unwire(edge_parts)
        edge_catalog.close()
        await unwire(parts)
        await catalog.aclose()


async def bm25_avg_len(index: QdrantIndex, collection: str) -> float:
    info = await index.client.get_collection(collection)
    return float((info.config.metadata or {})["bm25_avg_len"])


async def chunks_of(*texts: str) -> AsyncIterator[Sequence[Chunk]]:
    yield [
        msgspec.structs.replace(make_chunk("t", f"d{i}", 0, text), embed_text=text)
        for i, text in enumerate(texts)
    ]


@pytest.mark.anyio
async def test_the_catalogs_and_the_corpus(tmp_path: Path) -> None:
    """The cluster measures the corpus it is offered (chunks without a token left out, none
    at all keeps the default); Edge never reads it."""
    cluster = QdrantIndex.connect(":memory:", model_id="m", dim=8)
    catalog = QdrantCatalog(cluster)
    try:
        # "protein kinase" is 2 tokens, "the cells were dying" 2 ("the", "were": stop words)
        made, _ = await catalog.create(
            corpus=chunks_of("protein kinase", "the cells were dying", "the and of")
        )
        assert await bm25_avg_len(cluster, made) == 2.0
        made, _ = await catalog.create(corpus=chunks_of("the and of"))
        assert await bm25_avg_len(cluster, made) == DEFAULT_AVG_LEN
        made, _ = await catalog.create()
        assert await bm25_avg_len(cluster, made) == DEFAULT_AVG_LEN
    finally:
        await catalog.aclose()

    async def unreadable() -> AsyncIterator[Sequence[Chunk]]:
        raise AssertionError("Edge read the corpus")
        yield []

    edge = EdgeCatalog(tmp_path, model_id="m", dim=8)
    try:
        generation, _ = await edge.create(corpus=unreadable())
        await edge.discard(generation)
    finally:
        edge.close()
