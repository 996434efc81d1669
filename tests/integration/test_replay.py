"""Index generations on real Edge shards, and replay against a real Redis, Edge and embedder
(and against qdrant-client's local mode, swapping a cluster alias): the swap is recorded and
survives reopening, leftovers of a crash are removed, a failed replay leaves the active
generation and the applied records as they were."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.adapters.embedders.local import LocalEmbedder
from app.adapters.qdrant.edge_catalog import EdgeCatalog
from app.adapters.qdrant.remote_catalog import QdrantCatalog
from app.adapters.qdrant.remote_index import QdrantIndex
from app.adapters.redis.cache import RedisEmbeddingCache
from app.adapters.redis.client import RedisTarget
from app.adapters.redis.doc_status import RedisDocStatus
from app.adapters.redis.jobs import RedisReplayJobs
from app.adapters.redis.streams import EVENT_FIELD, RedisEventLog
from app.domain.events import DocumentDeleted, DocumentUpserted, Streams
from app.domain.records import Chunk, IndexedChunk
from app.errors import DependencyUnavailable
from app.ports import IndexCatalog
from app.services.active_index import ActiveIndex
from app.services.indexing import Indexer
from app.services.projector import Projector, ProjectorConfig
from app.services.projector.apply import Applier
from app.services.replay import Replay, ReplayConfig, ReplayProgress
from app.services.replay_jobs import ReplayJobs, StoredReplayJob
from tests.integration.projector_driver import start as start_projector
from tests.integration.redis_fixtures import ALL_BACKENDS, RawRedis

pytest_plugins = ("tests.integration.redis_fixtures",)
# Replays hold on every Redis topology, a Redis Cluster included.
REDIS_BACKENDS = ALL_BACKENDS

DIM = 8


def chunk(doc_id: str, i: int = 0) -> IndexedChunk:
    vector = np.zeros(DIM, np.float32)
    vector[i % DIM] = 1.0
    return IndexedChunk(
        chunk=Chunk(
            chunk_id=f"00000000-0000-0000-0000-{i:012d}",
            tenant="t",
            doc_id=doc_id,
            version="v1",
            event_id="",
            chunk_index=0,
            title="",
            section=[],
            text=f"text of {doc_id}",
            embed_text=f"text of {doc_id}",
            metadata={},
        ),
        vector=vector,
        token_signature=None,
    )


# --- the catalog -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_activate_switches_durably_and_drops_the_old_generation(tmp_path: Path) -> None:
    catalog = EdgeCatalog(tmp_path, model_id="m", dim=DIM)
    active = ActiveIndex(catalog)
    assert catalog.active == "0" and catalog.current().path == tmp_path / "index" / "m"
    await active.upsert([chunk("old", 1)])

    generation, fresh = await catalog.create()
    assert generation == "1" and (await fresh.stats()).points == 0
    await fresh.upsert([chunk("new", 2), chunk("new2", 3)])
    assert (await active.stats()).points == 1  # not active yet
    await catalog.activate(generation)
    assert (await active.stats()).points == 2
    assert not (tmp_path / "index" / "m").exists()
    assert (tmp_path / "index" / "m.active").read_bytes() == b'{"generation":"1"}'
    catalog.close()

    reopened = EdgeCatalog(tmp_path, model_id="m", dim=DIM)
    try:
        assert reopened.active == "1"
        assert (await reopened.current().stats()).points == 2
    finally:
        reopened.close()


@pytest.mark.anyio
async def test_dropping_a_generation_lets_operations_already_started_finish(
    tmp_path: Path,
) -> None:
    catalog = EdgeCatalog(tmp_path, model_id="m", dim=DIM)
    try:
        old = catalog.current()
        await old.upsert([chunk("a", 1)])
        # Far more operations than executor threads: most are still queued when the old
        # generation is dropped (in its own thread, as activate does after the swap).
        reads = [asyncio.ensure_future(old.stats()) for _ in range(300)]
        await asyncio.sleep(0)
        dropping = threading.Thread(target=old.close)
        dropping.start()
        results = await asyncio.gather(*reads, return_exceptions=True)
        dropping.join()
        assert [r for r in results if isinstance(r, BaseException)] == []
        with pytest.raises(DependencyUnavailable, match="closed"):
            await old.stats()
    finally:
        catalog.close()


@pytest.mark.anyio
async def test_a_build_that_never_finished_is_removed_at_open(tmp_path: Path) -> None:
    catalog = EdgeCatalog(tmp_path, model_id="m", dim=DIM)
    await catalog.current().upsert([chunk("kept", 1)])
    generation, fresh = await catalog.create()
    await fresh.upsert([chunk("half-built", 2)])
    # As if the process died before activate: the shards close, nothing is cleaned up.
    fresh.close()
    catalog.current().close()
    assert (tmp_path / "index" / f"m.gen-{generation}").is_dir()

    reopened = EdgeCatalog(tmp_path, model_id="m", dim=DIM)
    try:
        assert reopened.active == "0"
        assert not (tmp_path / "index" / f"m.gen-{generation}").exists()
        assert [p[1]["doc_id"] for p in await reopened.current().all_points()] == ["kept"]
        again, _ = await reopened.create()
        await reopened.discard(again)
        assert not reopened.path(again).exists()
    finally:
        reopened.close()


def test_a_record_naming_nothing_stops_the_open(tmp_path: Path) -> None:
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "m.active").write_text('{"generation":"7"}')
    with pytest.raises(DependencyUnavailable, match="not on disk"):
        EdgeCatalog(tmp_path, model_id="m", dim=DIM)
    (tmp_path / "index" / "m.active").write_text("{not json")
    with pytest.raises(DependencyUnavailable, match="does not name"):
        EdgeCatalog(tmp_path, model_id="m", dim=DIM)


# --- replay ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder() -> Iterator[LocalEmbedder]:
    made = LocalEmbedder(batch_size=32, max_concurrent_batches=1, threads=0)
    yield made
    made.close()


def wire(
    catalog: IndexCatalog, target: RedisTarget, prefix: str, embedder: LocalEmbedder
) -> dict[str, Any]:
    """A live projector over `catalog`, with the Redis parts a replay needs beside it."""
    cache = RedisEmbeddingCache(target, prefix=prefix, pool_size=2)
    status = RedisDocStatus(target, prefix=prefix, pool_size=2)
    event_log = RedisEventLog(target, pool_size=4)
    streams = Streams(prefix)
    live = Projector(
        event_log,
        Indexer(embedder, ActiveIndex(catalog)),
        cache,
        status,
        streams=streams,
        consumer="live",
        config=ProjectorConfig(),
    )
    return {
        "catalog": catalog,
        "cache": cache,
        "status": status,
        "event_log": event_log,
        "streams": streams,
        "live": live,
    }


async def unwire(parts: dict[str, Any]) -> None:
    await parts["event_log"].close()
    await parts["cache"].close()
    await parts["status"].close()


@pytest.fixture()
async def parts(
    tmp_path: Path, redis_target: RedisTarget, prefix: str, embedder: LocalEmbedder
) -> AsyncIterator[dict[str, Any]]:
    catalog = EdgeCatalog(tmp_path, model_id=embedder.model_id, dim=embedder.dim)
    wired = wire(catalog, redis_target, prefix, embedder)
    yield wired
    await unwire(wired)
    catalog.close()


def upserted(tenant: str, doc_id: str, text: str) -> DocumentUpserted:
    return DocumentUpserted(
        tenant=tenant,
        doc_id=doc_id,
        version=f"v-{abs(hash(text))}",
        title="",
        text=text,
        metadata={},
        chunk_size=24,
        chunk_overlap=0,
        at=time.time(),
        traceparent=None,
    )


def replay_of(parts: dict[str, Any], embedder: LocalEmbedder, **kw: Any) -> Replay:
    return Replay(
        catalog=parts["catalog"],
        event_log=parts["event_log"],
        embedder=embedder,
        cache=parts["cache"],
        status=parts["status"],
        streams=parts["streams"],
        live=parts["live"],
        config=ReplayConfig(batch=2, page=3),
        **kw,
    )


async def everything(catalog: EdgeCatalog) -> dict[str, tuple[dict[str, Any], list[float]]]:
    return {pid: (p, v) for pid, p, v in await catalog.current().all_points()}


async def fill(parts: dict[str, Any], raw_redis: RawRedis) -> None:
    log: RedisEventLog = parts["event_log"]
    stream = parts["streams"].documents
    long = "Sentence number one is here. " * 12
    for event in [
        upserted("acme", "a", long),
        upserted("other", "a", "The same id in another tenant."),
        upserted("acme", "b", "Short text about bees."),
    ]:
        await log.append(stream, event)
    await raw_redis.xadd(stream, {EVENT_FIELD: b"\xffnot an event"})
    await log.append(stream, DocumentDeleted(tenant="acme", doc_id="b", at=0, traceparent=None))
    await log.append(stream, upserted("acme", "a", "A shorter second version."))
    await log.append(stream, upserted("acme", "c", "Cats."))
    live: Projector = parts["live"]
    await start_projector(live)
    while await live.step():
        pass


@pytest.mark.anyio
async def test_replay_equals_the_live_index_across_tenants_and_skips_poison(
    parts: dict[str, Any], embedder: LocalEmbedder, raw_redis: RawRedis
) -> None:
    await fill(parts, raw_redis)
    live = await everything(parts["catalog"])
    applied_before = await parts["status"].applied(embedder.model_id, "acme", ["a", "b", "c"])

    seen: list[str] = []
    done = await replay_of(parts, embedder, on_progress=lambda p: seen.append(p.phase)).run()
    assert done.phase == "done" and done.generation == parts["catalog"].active == "1"
    assert done.documents == 4 and done.failed == 0 and done.entries == 7
    assert seen.index("rebuilding") < seen.index("catching_up") < seen.index("swapping")

    rebuilt = await everything(parts["catalog"])
    assert rebuilt.keys() == live.keys()
    assert all(rebuilt[k][0] == live[k][0] for k in live)
    applied_after = await parts["status"].applied(embedder.model_id, "acme", ["a", "b", "c"])
    assert [(a.event_id, a.status, a.version, a.chunks) for a in applied_after] == [  # type: ignore[union-attr]
        (a.event_id, a.status, a.version, a.chunks)
        for a in applied_before  # type: ignore[union-attr]
    ]


@pytest.mark.anyio
async def test_a_fresh_generation_still_sweeps_documents_it_has_written(
    parts: dict[str, Any], embedder: LocalEmbedder
) -> None:
    """A replay's applier skips the sweep of other versions for documents it has no record
    of (nothing of them is in its new generation); once it has written one, a newer version
    must still replace its chunks and a delete remove them, as in a catch-up."""
    catalog: EdgeCatalog = parts["catalog"]
    log: RedisEventLog = parts["event_log"]
    stream = parts["streams"].documents
    generation, index = await catalog.create()
    applier = Applier(
        Indexer(embedder, index),
        parts["cache"],
        parts["status"],
        index_id="fresh-test",
        config=ProjectorConfig(fresh_index=True),
    )

    async def apply(event: DocumentUpserted | DocumentDeleted) -> list[dict[str, Any]]:
        await log.append(stream, event)
        (entry,) = (await log.range(stream, start="-", count=1000))[-1:]
        assert await applier.apply_entries([entry]) == {}
        return [p for _, p, _ in await index.all_points() if p["doc_id"] == "a"]

    first = await apply(upserted("acme", "a", "Sentence number one is here. " * 12))
    assert len(first) > 1 and {p["version"] for p in first} == {first[0]["version"]}
    second = await apply(upserted("acme", "a", "A shorter second version."))
    assert len(second) == 1 and second[0]["version"] != first[0]["version"]
    assert await apply(DocumentDeleted(tenant="acme", doc_id="a", at=0, traceparent=None)) == []
    await catalog.discard(generation)


@pytest.mark.anyio
async def test_a_failed_replay_leaves_everything_as_it_was(
    parts: dict[str, Any],
    embedder: LocalEmbedder,
    raw_redis: RawRedis,
    prefix: str,
) -> None:
    await fill(parts, raw_redis)
    live = await everything(parts["catalog"])

    def explode(progress: ReplayProgress) -> None:
        if progress.phase == "rebuilding" and progress.applied:
            raise RuntimeError("boom")

    replay = replay_of(parts, embedder, on_progress=explode)
    with pytest.raises(RuntimeError, match="boom"):
        await replay.run()
    assert replay.progress.phase == "failed" and "boom" in (replay.progress.error or "")
    catalog: EdgeCatalog = parts["catalog"]
    assert catalog.active == "0" and not catalog.path("1").exists()
    assert await everything(catalog) == live
    assert [k async for k in raw_redis.scan_iter(match=f"{prefix}applied:*~replay-*")] == []
    # The live projector was never paused for good: it still applies.
    await parts["event_log"].append(parts["streams"].documents, upserted("acme", "d", "Dogs."))
    assert await parts["live"].step() == 1
    assert (await catalog.current().document("acme", "d")) is not None


# --- replay on the cluster adapter (qdrant-client's local mode) ----------------------------


@pytest.mark.anyio
async def test_replay_on_a_qdrant_cluster_swaps_the_alias_and_equals_the_live_index(
    redis_target: RedisTarget,
    prefix: str,
    embedder: LocalEmbedder,
    raw_redis: RawRedis,
) -> None:
    cluster = QdrantIndex.connect(":memory:", model_id=embedder.model_id, dim=embedder.dim)
    catalog = QdrantCatalog(cluster)
    parts = wire(catalog, redis_target, prefix, embedder)
    live: Projector = parts["live"]
    event_log: RedisEventLog = parts["event_log"]
    streams: Streams = parts["streams"]
    try:
        await fill(parts, raw_redis)
        first = await catalog.current_generation()
        before = {pid: (p, v) for pid, p, v in await cluster.all_points()}
        assert before  # the live projector wrote through the alias

        done = await replay_of(parts, embedder).run()
        assert done.phase == "done" and done.failed == 0
        assert done.generation == catalog.active == await catalog.current_generation()
        assert done.generation != first and first not in await catalog.generations()

        after = {pid: (p, v) for pid, p, v in await cluster.all_points()}
        assert after.keys() == before.keys()
        assert all(after[k][0] == before[k][0] for k in before)
        assert all(np.allclose(after[k][1], before[k][1], atol=1e-6) for k in before)
        # The live projector writes to the new generation through the same alias.
        await event_log.append(streams.documents, upserted("acme", "d", "Dogs."))
        assert await live.step() == 1
        assert (await cluster.document("acme", "d")) is not None
    finally:
        await unwire(parts)
        await catalog.aclose()


# --- replay jobs and their records ------------------------------------------------------


@pytest.mark.anyio
async def test_a_finished_job_is_readable_after_a_restart(
    parts: dict[str, Any],
    embedder: LocalEmbedder,
    raw_redis: RawRedis,
    redis_target: RedisTarget,
    prefix: str,
) -> None:
    await fill(parts, raw_redis)
    jobs = ReplayJobs(
        lambda: replay_of(parts, embedder), store=RedisReplayJobs(redis_target, prefix=prefix)
    )
    job = jobs.start()
    while (await jobs.get(job.job_id)).progress.phase not in ("done", "failed"):  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
    await jobs.aclose()

    restarted = ReplayJobs(
        lambda: replay_of(parts, embedder), store=RedisReplayJobs(redis_target, prefix=prefix)
    )
    try:
        again = await restarted.get(job.job_id)
        assert again is not None and again.progress.phase == "done"
        assert again.progress.chunks == job.progress.chunks > 0
        assert again.progress.generation == parts["catalog"].active
        assert await restarted.get("no-such-job") is None
    finally:
        await restarted.aclose()


@pytest.mark.anyio
async def test_a_job_no_longer_saved_reads_as_interrupted(
    redis_target: RedisTarget, prefix: str
) -> None:
    store = RedisReplayJobs(redis_target, prefix=prefix)
    jobs = ReplayJobs(lambda: pytest.fail("not started here"), store=store, save_every=1.0)
    try:
        now = time.time()
        for job_id, saved_at in (("stale", now - 60), ("live", now - 1)):
            progress = ReplayProgress(phase="rebuilding", started_at=now - 120, applied=7)
            await store.save(StoredReplayJob(job_id=job_id, progress=progress, saved_at=saved_at))
        stale = await jobs.get("stale")
        assert stale is not None and stale.progress.phase == "failed"
        assert "interrupted" in (stale.progress.error or "") and stale.progress.applied == 7
        live = await jobs.get("live")
        assert live is not None and live.progress.phase == "rebuilding"
    finally:
        await jobs.aclose()


@pytest.mark.anyio
async def test_a_job_store_that_is_down_does_not_fail_the_replay(
    parts: dict[str, Any], embedder: LocalEmbedder, raw_redis: RawRedis
) -> None:
    await fill(parts, raw_redis)
    nowhere = RedisReplayJobs("redis://127.0.0.1:1/0", prefix="x:")
    jobs = ReplayJobs(lambda: replay_of(parts, embedder), store=nowhere, save_every=0.05)
    job = jobs.start()
    while job.progress.phase not in ("done", "failed"):
        await asyncio.sleep(0.05)
    await jobs.aclose()
    assert job.progress.phase == "done" and parts["catalog"].active == "1"
