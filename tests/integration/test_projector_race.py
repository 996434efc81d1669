"""Several projectors on one index, racing versions and deletes of the same documents while
they are killed at random moments: the index must end with exactly each document's last
version (or nothing for a deleted one), whatever the interleaving.

The projectors share one index object in this process (the embedded Edge shard and
qdrant-client's local mode cannot be opened by two processes; a Qdrant cluster can, and is
what several workers share in production). Each has its own consumer name, as a pod would; a
kill cancels its task at whatever await it is in, which leaves Redis and the index as a
SIGKILL would. The index sleeps a random few milliseconds before every write, so the writes
of two projectors interleave in every order, as slow calls to a cluster do.

RACE_TEST_EVENTS (default 240) sets how many changes are made, RACE_TEST_SEED the seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from app.adapters.embedders.local import LocalEmbedder
from app.adapters.qdrant.edge_index import EdgeIndex
from app.adapters.qdrant.remote_index import QdrantIndex
from app.adapters.redis.cache import RedisEmbeddingCache
from app.adapters.redis.client import RedisTarget
from app.adapters.redis.doc_status import RedisDocStatus
from app.adapters.redis.streams import RedisEventLog
from app.domain.events import DocumentDeleted, DocumentUpserted, Streams
from app.domain.records import ChunkingParams, DocumentIn, IndexedChunk
from app.errors import NotFound
from app.services.indexing import Indexer
from app.services.ingest import LoggedIngest
from app.services.projector import GROUP, Projector, ProjectorConfig
from tests.integration.redis_fixtures import ALL_BACKENDS

pytest_plugins = ("tests.integration.redis_fixtures",)
pytestmark = pytest.mark.anyio
# The race holds on every topology, a Redis Cluster included.
REDIS_BACKENDS = ALL_BACKENDS

TENANT = "race"
CHUNKING = ChunkingParams(size=24, overlap=0)
EVENTS = int(os.environ.get("RACE_TEST_EVENTS", "240"))
SEED = int(os.environ.get("RACE_TEST_SEED", "20261205"))
PROJECTORS = 3
DOCS = [f"doc{i}" for i in range(4)]
# A few texts per document, so a version comes back (A, B, A) and "unchanged" is raced too.
TEXTS = [
    "Zebras graze on the open plains.",
    "Giraffes browse the acacia trees near the river. Lions rest in the shade all day long.",
    "Glaciers carve deep valleys. Rivers run to the sea. Storms gather over the mountains "
    "in the late afternoon, and the thunder rolls down to the harbor.",
]


@pytest.fixture(scope="module")
def embedder() -> Iterator[LocalEmbedder]:
    made = LocalEmbedder(batch_size=32, max_concurrent_batches=1, threads=1)
    yield made
    made.close()


class Jitter:
    """The index, with a random pause before each write: the interleavings of a cluster,
    now and then a long one, as a stalled call or a paused process has."""

    def __init__(self, index: Any, rng: random.Random) -> None:
        self.index = index
        self.rng = rng

    def pause(self) -> float:
        return self.rng.uniform(0.05, 0.3) if self.rng.random() < 0.1 else self.rng.uniform(0, 0.01)

    async def upsert(self, chunks: Sequence[IndexedChunk]) -> None:
        await asyncio.sleep(self.pause())
        await self.index.upsert(chunks)

    async def delete_document(self, tenant: str, doc_id: str, **which: str | None) -> int:
        await asyncio.sleep(self.pause())
        deleted: int = await self.index.delete_document(tenant, doc_id, **which)
        return deleted

    def __getattr__(self, name: str) -> Any:
        return getattr(self.index, name)


@pytest.fixture(params=["edge", "qdrant-local"])
async def index(
    request: pytest.FixtureRequest, tmp_path: Path, embedder: LocalEmbedder
) -> AsyncIterator[Any]:
    if request.param == "edge":
        edge = EdgeIndex(tmp_path, model_id=embedder.model_id, dim=embedder.dim)
        yield edge
        edge.close()
    else:
        local = QdrantIndex.connect(":memory:", model_id=embedder.model_id, dim=embedder.dim)
        yield local
        local.close()


async def test_projectors_racing_with_kills_leave_each_documents_last_version(
    redis_target: RedisTarget,
    prefix: str,
    event_log: RedisEventLog,
    embedder: LocalEmbedder,
    index: Any,
) -> None:
    rng = random.Random(SEED)
    streams = Streams(prefix)
    status = RedisDocStatus(redis_target, prefix=prefix, pool_size=4)
    cache = RedisEmbeddingCache(redis_target, prefix=prefix, pool_size=4)
    ingest = LoggedIngest(
        event_log,
        status,
        streams=streams,
        index_id=embedder.model_id,
        max_documents=10,
        wait_seconds=10,
    )
    shared = Jitter(index, rng)
    stop = asyncio.Event()
    names = iter(f"worker{i}" for i in range(10_000))
    every_task: list[asyncio.Task[None]] = []

    def start() -> tuple[Projector, asyncio.Task[None]]:
        projector = Projector(
            event_log,
            Indexer(embedder, shared),  # type: ignore[arg-type]
            cache,
            status,
            streams=streams,
            consumer=next(names),
            # Small batches and quick takeovers: more entries in flight on more workers.
            config=ProjectorConfig(batch=4, claim_idle_ms=300, block_ms=50, max_deliveries=5),
        )
        task = asyncio.create_task(projector.run(stop))
        every_task.append(task)
        return projector, task

    running = [start() for _ in range(PROJECTORS)]
    kills = 0

    async def write() -> None:
        for _ in range(EVENTS):
            doc_id = rng.choice(DOCS)
            if rng.random() < 0.2:
                with contextlib.suppress(NotFound):  # already deleted, or never written
                    await ingest.delete(TENANT, doc_id)
            else:
                text = rng.choice(TEXTS)
                await ingest.ingest(TENANT, [DocumentIn(id=doc_id, text=text)], CHUNKING)
            await asyncio.sleep(rng.uniform(0, 0.01))

    try:
        writer = asyncio.create_task(write())
        while not writer.done():
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            victim = rng.randrange(len(running))
            running[victim][1].cancel()  # a kill at whatever await it is in
            kills += 1
            running[victim] = start()
        await writer
        # Let the survivors finish: nothing pending, nothing new.
        for _ in range(600):
            info = await event_log.group_info(streams.documents, GROUP)
            if info is not None and info.pending == 0 and info.lag == 0:
                break
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*(task for _, task in running))
    finally:
        # Also when the test failed: `stop` ends every projector, a "killed" one included
        # whose cancel was lost (on Python 3.11 asyncio.wait_for can lose one, CPython
        # gh-86296), which would otherwise run on and hang the event loop's shutdown.
        stop.set()
        for _, task in running:
            task.cancel()
        await asyncio.wait(every_task, timeout=30)
        await status.close()
        await cache.close()

    last: dict[str, DocumentUpserted | DocumentDeleted] = {}
    for entry in await event_log.range(streams.documents, count=100_000):
        assert isinstance(entry.event, DocumentUpserted | DocumentDeleted)
        last[entry.event.doc_id] = entry.event
    by_doc: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _, payload, _ in await index.all_points(TENANT):
        by_doc[payload["doc_id"]].append(payload)
    planner = Indexer(embedder, index)
    wrong = {}
    for doc_id, event in last.items():
        held = by_doc.get(doc_id, [])
        if isinstance(event, DocumentDeleted):
            if held:
                wrong[doc_id] = f"deleted, yet {len(held)} points"
            continue
        want = planner.plan(TENANT, DocumentIn(id=doc_id, text=event.text), event.version, CHUNKING)
        versions = Counter(p["version"] for p in held)
        writers = {p["event_id"] for p in held}
        indexes = sorted(p["chunk_index"] for p in held)
        if (
            versions != Counter({event.version: len(want)})
            or len(writers) != 1
            or indexes != list(range(len(want)))
        ):
            wrong[doc_id] = f"want {len(want)} of {event.version}, hold {versions} by {writers}"
    reader = RedisDocStatus(redis_target, prefix=prefix)
    try:
        applied_records = await reader.applied(embedder.model_id, TENANT, list(last))
    finally:
        await reader.close()
    print(f"\n{EVENTS} changes, {kills} kills, {len(last)} documents; wrong: {wrong}")
    assert kills >= 5
    assert wrong == {}
    assert await event_log.length(streams.dead_letter) == 0
    for doc_id, record in zip(last, applied_records, strict=True):
        event = last[doc_id]
        assert record is not None
        if isinstance(event, DocumentDeleted):
            assert record.status == "deleted"
        else:
            assert (record.status, record.version) == ("indexed", event.version)
