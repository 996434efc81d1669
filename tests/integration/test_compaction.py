"""Compaction of the document stream on a real server: what it keeps, what it drops, and that a
replay of the compacted stream builds the same index as a replay of the full one, with updates
and deletes appended while it runs."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.adapters.embedders.local import LocalEmbedder
from app.adapters.qdrant.edge_catalog import EdgeCatalog
from app.adapters.redis.cache import RedisEmbeddingCache
from app.adapters.redis.client import RedisTarget
from app.adapters.redis.doc_status import RedisDocStatus
from app.adapters.redis.rewrite import RedisLogRewriter
from app.adapters.redis.streams import EVENT_FIELD, RedisEventLog
from app.domain.doc_status import Applied, Written
from app.domain.events import DocumentDeleted, DocumentUpserted, Event, Streams, encode_event
from app.services.compaction import Compaction, should_compact
from app.services.replay import Replay, ReplayConfig
from tests.integration.redis_fixtures import ALL_BACKENDS, RawRedis

pytest_plugins = ("tests.integration.redis_fixtures",)
pytestmark = pytest.mark.anyio
REDIS_BACKENDS = ALL_BACKENDS

GROUP = "indexer"
INDEX = "model"
TOPICS = ["bees", "rivers", "glaciers", "violins", "comets", "lichens", "tides", "kilns"]


def upserted(doc_id: str, text: str, tenant: str = "acme") -> DocumentUpserted:
    return DocumentUpserted(
        tenant=tenant,
        doc_id=doc_id,
        version=f"v-{abs(hash(text))}",
        title=f"About {doc_id}",
        text=text,
        metadata={"n": len(text)},
        chunk_size=24,
        chunk_overlap=0,
        at=time.time(),
        traceparent=None,
    )


def deleted(doc_id: str, tenant: str = "acme") -> DocumentDeleted:
    return DocumentDeleted(tenant=tenant, doc_id=doc_id, at=time.time(), traceparent=None)


class Mirrored:
    """Appends every event to the stream compaction works on and, under the same id, to a
    full copy compaction never touches."""

    def __init__(self, raw: RawRedis, stream: str, full: str) -> None:
        self.raw, self.stream, self.full = raw, stream, full

    async def append(self, event: Event) -> str:
        raw = encode_event(event)
        entry_id = await self.raw.xadd(self.stream, {EVENT_FIELD: raw})
        await self.raw.xadd(self.full, {EVENT_FIELD: raw}, id=entry_id)
        return entry_id.decode() if isinstance(entry_id, bytes) else entry_id

    async def garbage(self) -> None:
        entry_id = await self.raw.xadd(self.stream, {EVENT_FIELD: b"\xffnot an event"})
        await self.raw.xadd(self.full, {EVENT_FIELD: b"\xffnot an event"}, id=entry_id)


@pytest.fixture(scope="module")
def embedder() -> Iterator[LocalEmbedder]:
    made = LocalEmbedder(batch_size=32, max_concurrent_batches=1, threads=0)
    yield made
    made.close()


@pytest.fixture()
async def parts(redis_target: RedisTarget, prefix: str) -> AsyncIterator[dict[str, Any]]:
    event_log = RedisEventLog(redis_target, pool_size=4)
    rewriter = RedisLogRewriter(redis_target, page=5)
    status = RedisDocStatus(redis_target, prefix=prefix, pool_size=2)
    yield {
        "event_log": event_log,
        "rewriter": rewriter,
        "status": status,
        "streams": Streams(prefix),
    }
    await status.close()
    await rewriter.close()
    await event_log.close()


def compaction(parts: dict[str, Any], *, retention_hours: float = 24.0) -> Compaction:
    return Compaction(
        event_log=parts["event_log"],
        rewriter=parts["rewriter"],
        status=parts["status"],
        index_id=INDEX,
        streams=parts["streams"],
        tombstone_retention_seconds=retention_hours * 3600,
        page=4,
    )


async def test_a_replay_of_the_compacted_stream_equals_one_of_the_full_stream(
    parts: dict[str, Any],
    raw_redis: RawRedis,
    redis_target: RedisTarget,
    prefix: str,
    embedder: LocalEmbedder,
    tmp_path: Path,
) -> None:
    streams: Streams = parts["streams"]
    full = Streams(f"{prefix}full:")
    log = Mirrored(raw_redis, streams.documents, full.documents)
    rng = random.Random(7)
    docs = [f"doc-{i}" for i in range(24)]
    for version in range(3):
        for doc_id in docs:
            topic = rng.choice(TOPICS)
            await log.append(upserted(doc_id, f"Version {version} of {doc_id} is about {topic}."))
    for doc_id in docs[:6]:
        await log.append(deleted(doc_id))
    await log.append(upserted(docs[0], "Brought back after its delete, about kilns."))
    await log.append(upserted("doc-0", "Same id in another tenant.", tenant="other"))
    await log.garbage()
    # A consumer group part of the way through, with entries pending on a consumer.
    await parts["event_log"].ensure_group(streams.documents, GROUP)
    await parts["event_log"].read_group(streams.documents, GROUP, "c", count=30, block_ms=0)
    before = await parts["event_log"].length(streams.documents)

    stop = asyncio.Event()
    raced: list[str] = []

    async def race() -> None:
        # Updates and deletes of documents compaction is reading, as it reads them.
        n = 0
        while not stop.is_set():
            doc_id = rng.choice(docs)
            if n % 5 == 4:
                event: Event = deleted(doc_id)
            else:
                event = upserted(doc_id, f"Raced edit {n} of {doc_id} about {rng.choice(TOPICS)}.")
            raced.append(await log.append(event))
            n += 1
            await asyncio.sleep(0.001)

    racing = asyncio.create_task(race())
    done = await compaction(parts).run()
    stop.set()
    await racing

    assert done.phase == "done" and raced
    assert done.superseded >= 2 * len(docs) and done.tombstones == 0  # retention: 24 h
    after = await parts["event_log"].range(streams.documents, count=10_000)
    assert len(after) < before + len(raced)
    assert [e.id for e in after if e.id in set(raced)] == raced  # nothing appended was lost

    compacted = await _replayed(redis_target, streams, embedder, tmp_path / "compacted")
    complete = await _replayed(redis_target, full, embedder, tmp_path / "full")
    assert compacted.keys() == complete.keys() and len(compacted) >= len(docs) // 2
    for point_id, (payload, vector) in complete.items():
        assert compacted[point_id][0] == payload
        assert np.allclose(compacted[point_id][1], vector, atol=1e-6)


async def test_old_settled_deletes_go_and_the_others_stay(
    parts: dict[str, Any], raw_redis: RawRedis, prefix: str
) -> None:
    streams: Streams = parts["streams"]
    event_log: RedisEventLog = parts["event_log"]
    status: RedisDocStatus = parts["status"]
    for doc_id in ("kept", "gone", "pending"):
        await event_log.append(streams.documents, upserted(doc_id, f"Text of {doc_id}."))
    gone = await event_log.append(streams.documents, deleted("gone"))
    record = Written(event_id=gone, op="delete", version=None, at=0.0)
    await status.record_written("acme", {"gone": record})
    await status.record_applied(
        INDEX, "acme", {"gone": Applied(event_id=gone, status="deleted", at=0.0)}
    )
    await event_log.ensure_group(streams.documents, GROUP)
    read = await event_log.read_group(streams.documents, GROUP, "c", count=100, block_ms=0)
    await event_log.ack(streams.documents, GROUP, [e.id for e in read])
    late = await event_log.append(streams.documents, deleted("pending"))  # not yet delivered

    # Within retention nothing but superseded entries goes.
    kept = await compaction(parts, retention_hours=1).run()
    assert (kept.superseded, kept.tombstones, kept.entries_after) == (2, 0, 3)

    done = await compaction(parts, retention_hours=0).run()
    assert (done.tombstones, done.entries_after) == (1, 2)
    # The document whose last event went is unknown now, not "pending" after a replay.
    assert await status.both(INDEX, "acme", ["gone"]) == [(None, None)]
    remaining = await event_log.range(streams.documents)
    assert [(type(e.event).__name__, e.event.doc_id) for e in remaining] == [  # type: ignore[union-attr]
        ("DocumentUpserted", "kept"),
        ("DocumentDeleted", "pending"),  # the group has not seen it yet
    ]
    assert remaining[-1].id == late
    # The group reads on from where it was: the undelivered delete comes next.
    nxt = await event_log.read_group(streams.documents, GROUP, "c", count=10, block_ms=0)
    assert [e.id for e in nxt] == [late]


async def test_an_empty_or_missing_stream_compacts_to_nothing(parts: dict[str, Any]) -> None:
    done = await compaction(parts).run()
    assert (done.phase, done.entries_before, done.entries_after) == ("done", 0, 0)


def test_automatic_compaction_waits_for_growth() -> None:
    assert not should_compact(50_000, last_after=None, min_entries=0, growth=2.0)  # off
    assert not should_compact(9_999, last_after=None, min_entries=10_000, growth=2.0)
    assert should_compact(10_000, last_after=None, min_entries=10_000, growth=2.0)
    assert not should_compact(15_000, last_after=8_000, min_entries=10_000, growth=2.0)
    assert should_compact(16_000, last_after=8_000, min_entries=10_000, growth=2.0)


async def _replayed(
    target: RedisTarget, streams: Streams, embedder: LocalEmbedder, data_dir: Path
) -> dict[str, tuple[dict[str, Any], list[float]]]:
    """Every point of an index replayed from `streams` into a fresh Edge catalog."""
    catalog = EdgeCatalog(data_dir, model_id=embedder.model_id, dim=embedder.dim)
    event_log = RedisEventLog(target, pool_size=2)
    cache = RedisEmbeddingCache(target, prefix=streams.prefix, pool_size=2)
    status = RedisDocStatus(target, prefix=streams.prefix, pool_size=2)
    try:
        progress = await Replay(
            catalog=catalog,
            event_log=event_log,
            embedder=embedder,
            cache=cache,
            status=status,
            streams=streams,
            live=None,
            config=ReplayConfig(batch=8, page=16),
        ).run()
        assert progress.phase == "done"
        return {pid: (p, v) for pid, p, v in await catalog.current().all_points()}
    finally:
        await status.close()
        await cache.close()
        await event_log.close()
        catalog.close()
