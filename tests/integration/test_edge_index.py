"""The Qdrant Edge adapter against the real in-process engine, on disk under a temp directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from app.adapters.qdrant.edge_index import EdgeIndex
from app.domain.records import FieldFilter, Hit, IndexQuery
from app.services.indexing import chunk_id
from tests.integration.test_index_contract import (
    DIM,
    WORDS,
    indexed,
    make_chunk,
    query,
    unit,
)
from tests.integration.test_index_contract import search as retrieve_and_hydrate


@pytest.fixture()
def index(tmp_path: Path):
    idx = EdgeIndex(tmp_path, model_id="test-model", dim=DIM, metadata_indexes={"year": "integer"})
    yield idx
    idx.close()


def run(coro):
    return asyncio.run(coro)


def search(index: EdgeIndex, q: IndexQuery) -> list[Hit]:
    return run(retrieve_and_hydrate(index, q))


def test_dense_and_bm25_scores_are_exact(index: EdgeIndex) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng, 8)
    chunks = [
        indexed(make_chunk("a", f"doc{i}", 0, f"{WORDS[i]} report"), vectors[i]) for i in range(8)
    ]
    run(index.upsert(chunks))

    hits = search(index, query(vectors[3], "delta", limit=3))
    by_id = {h.chunk_id: h for h in hits}
    top = chunks[3].chunk.chunk_id
    assert top in by_id
    assert by_id[top].dense == pytest.approx(1.0, abs=1e-5)
    assert by_id[top].bm25 is not None and by_id[top].bm25 > 0
    by_doc = {f"doc{i}": vectors[i] for i in range(8)}
    for h in hits:
        # every candidate carries its exact cosine, whichever retriever found it
        assert h.dense == pytest.approx(float(by_doc[h.doc_id] @ vectors[3]), abs=1e-5)
        if h.chunk_id != top:
            assert h.bm25 is None  # no query term in its text

    only_bm25 = search(index, query(vectors[0], "delta", dense=False))
    assert [h.doc_id for h in only_bm25] == ["doc3"]
    # the cosine is filled in even when only BM25 retrieved
    assert only_bm25[0].dense == pytest.approx(float(vectors[3] @ vectors[0]), abs=1e-5)

    # a candidate only the dense side found gets its exact BM25 score too
    both = search(index, query(vectors[5], "delta report", limit=1))
    assert {h.doc_id for h in both} == {"doc5", "doc3"}
    assert all(h.bm25 is not None and h.bm25 > 0 for h in both)

    got = run(index.vectors([chunks[2].chunk.chunk_id]))
    assert np.allclose(got[chunks[2].chunk.chunk_id], vectors[2], atol=1e-6)


def test_stemming_and_stop_words(index: EdgeIndex) -> None:
    rng = np.random.default_rng(2)
    run(
        index.upsert(
            [indexed(make_chunk("a", "runner", 0, "The runners were running"), unit(rng)[0])]
        )
    )
    hits = search(index, query(unit(rng)[0], "the run", dense=False))
    assert [h.doc_id for h in hits] == ["runner"]
    assert search(index, query(unit(rng)[0], "the were", dense=False)) == []


def test_tenants_never_see_each_other(index: EdgeIndex) -> None:
    rng = np.random.default_rng(3)
    v = unit(rng)[0]
    run(index.upsert([indexed(make_chunk("a", "secret", 0, "alpha secret"), v)]))
    assert search(index, query(v, "alpha secret", tenant="b")) == []
    assert [h.doc_id for h in search(index, query(v, "alpha", tenant="a"))] == ["secret"]
    assert run(index.document("b", "secret")) is None
    assert run(index.stats("b")).points == 0


def test_filters(index: EdgeIndex) -> None:
    rng = np.random.default_rng(4)
    vectors = unit(rng, 4)
    meta = [
        {"year": 2000, "kind": "x"},
        {"year": 2010, "kind": "y"},
        {"year": 2020, "kind": "x", "tags": ["p", "q"]},
        {"year": 2030, "kind": "z"},
    ]
    run(
        index.upsert(
            [
                indexed(make_chunk("a", f"d{i}", 0, "echo", metadata=meta[i]), vectors[i])
                for i in range(4)
            ]
        )
    )

    def ids(*filters: FieldFilter) -> set[str]:
        return {h.doc_id for h in search(index, query(vectors[0], "echo", filters=list(filters)))}

    assert ids(FieldFilter(key="kind", equals="x")) == {"d0", "d2"}
    assert ids(FieldFilter(key="kind", any_of=["y", "z"])) == {"d1", "d3"}
    assert ids(FieldFilter(key="year", gte=2010, lt=2030)) == {"d1", "d2"}
    assert ids(FieldFilter(key="year", equals=2020)) == {"d2"}
    assert ids(FieldFilter(key="tags", equals="q")) == {"d2"}
    assert ids(FieldFilter(key="kind", equals="x"), FieldFilter(key="year", gt=2000)) == {"d2"}


def test_token_signatures_round_trip(index: EdgeIndex) -> None:
    rng = np.random.default_rng(6)
    item = indexed(make_chunk("a", "sig", 0, "golf"), unit(rng)[0])
    run(index.upsert([item]))
    got = run(index.token_signatures([item.chunk.chunk_id, chunk_id("a", "missing", 0)]))
    assert got == {item.chunk.chunk_id: item.token_signature}


def test_data_survives_reopen_and_hnsw_gets_built(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    vectors = unit(rng, 3000)
    first = EdgeIndex(tmp_path, model_id="m", dim=DIM)
    items = [indexed(make_chunk("a", f"d{i}", 0, WORDS[i % 8]), vectors[i]) for i in range(3000)]
    run(first.upsert(items))
    run(first.optimize())
    stats = run(first.stats())
    assert stats.points == 3000 and stats.documents == 3000
    assert stats.indexed_vectors >= 3000  # the optimizer built the HNSW graph
    first.close()

    second = EdgeIndex(tmp_path, model_id="m", dim=DIM)
    try:
        assert run(second.stats()).points == 3000
        hits = search(second, query(vectors[42], "", bm25=False, limit=1))
        assert hits[0].doc_id == "d42"
    finally:
        second.close()


def test_closed_index_is_unavailable(tmp_path: Path) -> None:
    from app.errors import DependencyUnavailable

    idx = EdgeIndex(tmp_path, model_id="m", dim=DIM)
    idx.close()
    assert run(idx.ready()) is False
    with pytest.raises(DependencyUnavailable):
        run(idx.stats())


def test_acknowledged_writes_survive_a_kill(tmp_path: Path) -> None:
    """Writes are made durable by the WAL's fsync, not by a flush of the segments: a process
    killed right after its writes returned leaves them to the WAL, replayed at open."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from pathlib import Path
        import numpy as np
        from app.adapters.qdrant.edge_index import EdgeIndex
        from tests.integration.test_index_contract import indexed, make_chunk, unit
        index = EdgeIndex(Path({str(tmp_path)!r}), model_id="m", dim={DIM})
        vectors = unit(np.random.default_rng(3), 300)
        items = [indexed(make_chunk("a", f"d{{i}}", 0, "alpha"), vectors[i]) for i in range(300)]
        asyncio.run(index.upsert(items))
        assert asyncio.run(index.delete_document("a", "d7")) == 1
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2])
    assert done.returncode == -9
    reopened = EdgeIndex(tmp_path, model_id="m", dim=DIM)
    try:
        assert run(reopened.stats()).points == 299
        assert run(reopened.document("a", "d7")) is None
        assert run(reopened.document("a", "d8")) is not None
    finally:
        reopened.close()
