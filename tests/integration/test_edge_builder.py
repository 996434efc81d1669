"""A generation built in a child process: the same index as one built in process, the
serving process's event loop free meanwhile, and a dead child failing loudly."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from app.adapters.qdrant.edge_builder import EdgeBuilder
from app.adapters.qdrant.edge_catalog import EdgeCatalog
from app.adapters.qdrant.edge_index import EdgeIndex
from app.domain.records import Chunk, IndexedChunk, IndexQuery
from app.errors import DependencyUnavailable

DIM = 64


def chunks(n: int, *, seed: int = 3) -> list[IndexedChunk]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        IndexedChunk(
            chunk=Chunk(
                chunk_id=f"00000000-0000-0000-0000-{i:012d}",
                tenant="t",
                doc_id=f"d{i}",
                version="v1",
                event_id="",
                chunk_index=0,
                title="",
                section=[],
                text=f"text number {i} about topic {i % 7}",
                embed_text=f"text number {i} about topic {i % 7}",
                metadata={},
            ),
            vector=vectors[i],
            token_signature=bytes([i % 256]) * 48,
        )
        for i in range(n)
    ]


@pytest.mark.anyio
async def test_a_built_generation_equals_one_written_in_process(tmp_path: Path) -> None:
    items = chunks(600)
    catalog = EdgeCatalog(tmp_path / "a", model_id="m", dim=DIM)
    plain = EdgeIndex(tmp_path / "b", model_id="m", dim=DIM)
    try:
        generation, builder = await catalog.create()
        for part in (items[:300], items[300:]):
            await builder.upsert(part)
            await plain.upsert(part)
        assert await builder.delete_document("t", "d5") == 1
        assert await plain.delete_document("t", "d5") == 1
        assert (await builder.stats()).points == 599
        assert await builder.chunks("t", "d7") == await plain.chunks("t", "d7") != []
        await catalog.activate(generation)
        built = catalog.current()

        assert sorted(await built.all_points()) == sorted(await plain.all_points())
        dense = IndexQuery(
            tenant="t", text="", vector=items[42].vector, limit=10, dense=True, bm25=False
        )
        found = [(h.chunk_id, round(h.dense, 5)) for h in await built.retrieve(dense)]
        assert found == [(h.chunk_id, round(h.dense, 5)) for h in await plain.retrieve(dense)]
        assert found[0][0] == items[42].chunk.chunk_id
        # BM25 over the same text index: one document holds "123", the rest tie below it.
        bm25 = IndexQuery(
            tenant="t", text="number 123", vector=items[0].vector, limit=5, dense=False, bm25=True
        )
        top = [(await index.retrieve(bm25))[0] for index in (built, plain)]
        assert top[0].chunk_id == top[1].chunk_id == items[123].chunk.chunk_id
        assert top[0].bm25 == pytest.approx(top[1].bm25)
        sigs = await built.token_signatures([items[7].chunk.chunk_id])
        assert sigs == {items[7].chunk.chunk_id: bytes([7]) * 48}
    finally:
        catalog.close()
        plain.close()


@pytest.mark.anyio
async def test_the_event_loop_runs_while_the_child_writes_and_builds_hnsw(
    tmp_path: Path,
) -> None:
    """qdrant-edge-py holds the GIL through each engine call; in the child, that GIL is not
    ours. A ticker on this loop keeps ticking while 5,000 points are written and indexed."""
    items = chunks(5000)
    builder = EdgeBuilder(tmp_path / "g", model_id="m", dim=DIM)
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    try:
        await builder.started()
        started = time.perf_counter()
        for start in range(0, len(items), 1000):
            await builder.upsert(items[start : start + 1000])
        await builder.finish()
        elapsed = time.perf_counter() - started
    finally:
        ticker.cancel()
        builder.close()
    during = [t for t in ticks if t >= started]
    gaps = np.diff(during)
    # In process the loop would get no turn for the length of each engine call.
    assert len(during) >= elapsed / 0.01 * 0.3, (len(during), elapsed)
    assert gaps.max() < max(0.25, elapsed / 4), (gaps.max(), elapsed)


@pytest.mark.anyio
async def test_a_dead_builder_fails_the_build_and_the_catalog_recovers(tmp_path: Path) -> None:
    catalog = EdgeCatalog(tmp_path, model_id="m", dim=DIM)
    try:
        await catalog.current().upsert(chunks(3))
        generation, builder = await catalog.create()
        await builder.upsert(chunks(10))
        os.kill(builder._process.pid, signal.SIGKILL)
        with pytest.raises(DependencyUnavailable, match="exited"):
            await builder.upsert(chunks(10, seed=4))
        with pytest.raises(DependencyUnavailable):
            await catalog.activate(generation)
        assert catalog.active == "0" and not catalog.path(generation).exists()
        assert (await catalog.current().stats()).points == 3
        again, fresh = await catalog.create()
        await fresh.upsert(chunks(5))
        await catalog.activate(again)
        assert (await catalog.current().stats()).points == 5
    finally:
        catalog.close()


def test_a_builder_whose_parent_is_gone_exits(tmp_path: Path) -> None:
    """The child reads until its end of the socket closes, so an orphan does not linger
    holding a shard."""
    builder = EdgeBuilder(tmp_path / "g", model_id="m", dim=DIM)
    asyncio.run(builder.started())
    builder._conn.close()  # what the parent's death does to the child's socket
    assert builder._process.wait(timeout=30) == 0


@pytest.mark.anyio
async def test_closing_during_a_request_does_not_wait_for_it(tmp_path: Path) -> None:
    """A shutdown during a long engine call (an HNSW build) stops the child at once; the
    call in flight fails instead of the shutdown waiting for it."""
    builder = EdgeBuilder(tmp_path / "g", model_id="m", dim=DIM)
    await builder.started()
    await builder.upsert(chunks(20_000))
    finishing = asyncio.ensure_future(builder.finish())
    await asyncio.sleep(0.3)  # the child is building HNSW for 20,000 points (seconds)
    started = time.perf_counter()
    await asyncio.to_thread(builder.close)
    assert time.perf_counter() - started < 2.0
    with pytest.raises(DependencyUnavailable, match="exited"):
        await finishing
