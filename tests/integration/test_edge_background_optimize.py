"""The serving generation gets its HNSW from a child: copied, optimized there while writes go
on here, handed over with every write, and the serving event loop free meanwhile."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from app.adapters.qdrant.edge_catalog import EdgeCatalog
from app.adapters.qdrant.edge_shard import OPTIMIZE_AFTER_UNINDEXED
from app.domain.records import IndexQuery
from tests.integration.test_edge_builder import DIM, chunks


async def settled(catalog: EdgeCatalog, timeout: float = 120.0) -> None:
    """Until no background optimize runs."""
    deadline = time.monotonic() + timeout
    while catalog._optimizing is not None:
        assert time.monotonic() < deadline, "the background optimize did not end"
        await asyncio.sleep(0.05)


@pytest.mark.anyio
async def test_writes_during_the_optimize_reach_the_next_generation(tmp_path: Path) -> None:
    items = chunks(OPTIMIZE_AFTER_UNINDEXED + 1500)
    first, later = items[:OPTIMIZE_AFTER_UNINDEXED], items[OPTIMIZE_AFTER_UNINDEXED:]
    catalog = EdgeCatalog(tmp_path, model_id="m", dim=DIM)
    try:
        for start in range(0, len(first), 500):
            await catalog.current().upsert(first[start : start + 500])
        assert catalog._optimizing is not None  # started by the write that crossed the mark
        source = catalog.current()
        # Written while the child copies and optimizes: kept, then made on the copy.
        for start in range(0, len(later), 100):
            await catalog.current().upsert(later[start : start + 100])
        assert await catalog.current().delete_document("t", "d5") == 1
        assert await catalog.current().delete_document("t", f"d{len(items) - 1}") == 1
        await settled(catalog)
        assert catalog.active == "1" and catalog.current() is not source
        assert not source.path.exists()  # dropped once handed over

        stats = await catalog.current().stats()
        assert stats.points == len(items) - 2
        assert stats.indexed_vectors >= OPTIMIZE_AFTER_UNINDEXED
        dense = IndexQuery(
            tenant="t", text="", vector=later[42].vector, limit=3, dense=True, bm25=False
        )
        assert (await catalog.current().retrieve(dense))[0].chunk_id == later[42].chunk.chunk_id
        assert await catalog.current().chunks("t", "d5") == []
    finally:
        catalog.close()

    reopened = EdgeCatalog(tmp_path, model_id="m", dim=DIM)
    try:
        assert reopened.active == "1"
        assert (await reopened.current().stats()).points == len(items) - 2
    finally:
        reopened.close()


@pytest.mark.anyio
async def test_the_serving_loop_runs_while_hnsw_is_built(tmp_path: Path) -> None:
    """In process, the optimizer holds the GIL for the whole build: a ticker on this loop
    would get no turn. Here the build runs in the child; only the open of the finished
    shard runs here."""
    items = chunks(8000)
    catalog = EdgeCatalog(tmp_path, model_id="m", dim=DIM)
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    try:
        # Written before the ticker starts: the writes themselves are not what is measured.
        for start in range(0, len(items), 1000):
            await catalog.current().upsert(items[start : start + 1000])
        ticker = asyncio.create_task(tick())
        started = time.perf_counter()
        await settled(catalog)
        elapsed = time.perf_counter() - started
        ticker.cancel()
        assert catalog.active != "0"
        assert (await catalog.current().stats()).indexed_vectors >= OPTIMIZE_AFTER_UNINDEXED
    finally:
        catalog.close()
    gaps = np.diff([t for t in ticks if t >= started])
    assert elapsed > 0.3, elapsed  # there was a build to wait for
    assert gaps.max() < max(0.25, elapsed / 4), (gaps.max(), elapsed)


@pytest.mark.anyio
async def test_a_replay_abandons_the_optimize(tmp_path: Path) -> None:
    # Enough points that the child is still building HNSW (seconds) when the replay starts.
    items = chunks(20_000)
    catalog = EdgeCatalog(tmp_path, model_id="m", dim=DIM)
    try:
        await catalog.current().upsert(items)
        assert catalog._optimizing is not None
        generation, builder = await catalog.create()
        assert catalog._optimizing is None and catalog.active == "0"
        assert sorted(p.name for p in (tmp_path / "index").iterdir() if p.is_dir()) == [
            "m",
            f"m.gen-{generation}",
        ]
        await builder.upsert(items[:5])
        await catalog.activate(generation)
        assert (await catalog.current().stats()).points == 5
        # Writes go on as before, and the next optimize can start.
        await catalog.current().upsert(items[5:])
        await settled(catalog)
        assert (await catalog.current().stats()).points == len(items)
    finally:
        catalog.close()
