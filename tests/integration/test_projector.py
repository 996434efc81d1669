"""The projector against a real Redis (the machine's and an embedded Valkey), a real Edge index
and the real embedder: ordering, idempotence, redelivery, claims, poison and outages."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import pytest

from app.adapters.embedders.circuit_breaker import CircuitBreaker
from app.adapters.embedders.local import LocalEmbedder
from app.adapters.embedders.openai_api import OpenAIEmbedder
from app.adapters.qdrant.edge_index import EdgeIndex
from app.adapters.redis.cache import RedisEmbeddingCache
from app.adapters.redis.client import RedisTarget
from app.adapters.redis.doc_status import RedisDocStatus
from app.adapters.redis.streams import EVENT_FIELD, RedisEventLog
from app.domain.doc_status import Applied, Written
from app.domain.events import DocumentUpserted, EventDeadLettered, FeedbackGiven, Streams
from app.domain.records import ChunkingParams, DocumentIn, IndexedChunk
from app.errors import DependencyUnavailable, EmbedderUnavailable
from app.services.indexing import Indexer, document_version
from app.services.ingest import LoggedIngest
from app.services.projector import GROUP, Projector, ProjectorConfig
from tests.integration.projector_driver import start as start_projector
from tests.integration.redis_fixtures import ALL_BACKENDS, RawRedis, delivery_counts
from tests.openai_wire import FakeEmbeddings, Reply

pytest_plugins = ("tests.integration.redis_fixtures",)
pytestmark = pytest.mark.anyio
# The projector's guarantees hold on every topology, a Redis Cluster included.
REDIS_BACKENDS = ALL_BACKENDS

TENANT = "acme"
SMALL = ChunkingParams(size=24, overlap=0)  # a few sentences make several chunks


@pytest.fixture(scope="module")
def embedder() -> Iterator[LocalEmbedder]:
    made = LocalEmbedder(batch_size=32, max_concurrent_batches=1, threads=0)
    yield made
    made.close()


@pytest.fixture()
def index(tmp_path: Path, embedder: LocalEmbedder) -> Iterator[EdgeIndex]:
    made = EdgeIndex(tmp_path, model_id=embedder.model_id, dim=embedder.dim)
    yield made
    made.close()


@pytest.fixture()
async def cache(redis_target: RedisTarget, prefix: str) -> AsyncIterator[RedisEmbeddingCache]:
    made = RedisEmbeddingCache(redis_target, prefix=prefix, pool_size=2)
    yield made
    await made.close()


@pytest.fixture()
async def status(redis_target: RedisTarget, prefix: str) -> AsyncIterator[RedisDocStatus]:
    made = RedisDocStatus(redis_target, prefix=prefix, pool_size=2)
    yield made
    await made.close()


@pytest.fixture()
def streams(prefix: str) -> Streams:
    return Streams(prefix)


@pytest.fixture()
def ingest(
    event_log: RedisEventLog, status: RedisDocStatus, streams: Streams, embedder: LocalEmbedder
) -> LoggedIngest:
    return logged_ingest(event_log, status, streams, embedder.model_id)


def logged_ingest(
    event_log: RedisEventLog,
    status: RedisDocStatus,
    streams: Streams,
    index_id: str,
    max_documents: int = 100,
) -> LoggedIngest:
    return LoggedIngest(
        event_log,
        status,
        streams=streams,
        index_id=index_id,
        max_documents=max_documents,
        wait_seconds=10,
    )


MakeProjector = Callable[..., Projector]


@pytest.fixture()
def make_projector(
    event_log: RedisEventLog,
    embedder: LocalEmbedder,
    index: EdgeIndex,
    cache: RedisEmbeddingCache,
    status: RedisDocStatus,
    streams: Streams,
) -> MakeProjector:
    def make(consumer: str = "p1", on: EdgeIndex | None = None, **config: object) -> Projector:
        settings = {"max_deliveries": 3, "claim_idle_ms": 60_000, **config}
        return Projector(
            event_log,
            Indexer(embedder, on or index),
            cache,
            status,
            streams=streams,
            consumer=consumer,
            config=ProjectorConfig(**settings),  # type: ignore[arg-type]
        )

    return make


def doc(doc_id: str, text: str, title: str = "") -> DocumentIn:
    return DocumentIn(id=doc_id, text=text, title=title)


def planned(
    embedder: LocalEmbedder, document: DocumentIn, chunking: ChunkingParams, event_id: str = ""
) -> list[str]:
    """The chunk ids the index must hold for this document at this version, written by
    this event."""
    version = document_version(document, chunking)
    planner = Indexer(embedder, None)  # type: ignore[arg-type]
    plan = planner.plan(TENANT, document, version, chunking, event_id)
    return [c.chunk_id for c in plan]


async def points(index: EdgeIndex) -> dict[str, list[tuple[str, str]]]:
    """doc id -> [(point id, version)] of everything in the index."""
    by_doc: dict[str, list[tuple[str, str]]] = {}
    for point_id, payload, _ in await index.all_points(TENANT):
        by_doc.setdefault(payload["doc_id"], []).append((point_id, payload["version"]))
    return by_doc


async def drain(projector: Projector) -> None:
    """Start (own pending, takeovers), then apply new entries until none are left."""
    await start_projector(projector)
    while await projector.step(0):
        pass


async def settled(event_log: RedisEventLog, streams: Streams) -> tuple[int, int | None]:
    info = await event_log.group_info(streams.documents, GROUP)
    assert info is not None
    return info.pending, info.lag


SAVANNA = (
    "Herds of zebras graze on the open plains every morning. Tall giraffes browse the "
    "acacia trees near the river. Lions rest in the shade through the heat of the day."
)


async def test_upserts_and_deletes_reach_the_index_and_the_status(
    ingest: LoggedIngest,
    make_projector: MakeProjector,
    index: EdgeIndex,
    embedder: LocalEmbedder,
    event_log: RedisEventLog,
    streams: Streams,
) -> None:
    docs = [doc("savanna", SAVANNA, "Savanna"), doc("short", "Volcanoes erupt lava.")]
    accepted = await ingest.ingest(TENANT, docs, SMALL)
    assert [a.status for a in accepted] == ["pending", "pending"]
    assert all(a.event_id for a in accepted)
    view = await ingest.status(TENANT, "savanna")
    assert view is not None and (view.status, view.version) == ("pending", accepted[0].version)

    await drain(make_projector())
    expected = {
        d.id: planned(embedder, d, SMALL, a.event_id) for d, a in zip(docs, accepted, strict=True)
    }
    assert len(expected["savanna"]) >= 3
    held = await points(index)
    assert {d: sorted(p for p, _ in pts) for d, pts in held.items()} == {
        d: sorted(ids) for d, ids in expected.items()
    }
    for a in accepted:
        view = await ingest.status(TENANT, a.doc_id)
        assert view is not None
        assert (view.status, view.version, view.event_id, view.chunks) == (
            "indexed",
            a.version,
            a.event_id,
            len(expected[a.doc_id]),
        )

    # A shorter version replaces every chunk of the longer one.
    shorter = doc("savanna", "Only zebras now.", "Savanna")
    (update,) = await ingest.ingest(TENANT, [shorter], SMALL)
    await drain(make_projector())
    assert sorted((await points(index))["savanna"]) == [
        (pid, update.version) for pid in planned(embedder, shorter, SMALL, update.event_id)
    ]

    deleted = await ingest.delete(TENANT, "savanna")
    assert deleted.status == "pending"
    await drain(make_projector())
    assert set(await points(index)) == {"short"}
    view = await ingest.status(TENANT, "savanna")
    assert view is not None and (view.status, view.event_id) == ("deleted", deleted.event_id)
    assert await settled(event_log, streams) == (0, 0)


async def test_unchanged_documents_are_not_appended_again(
    ingest: LoggedIngest, make_projector: MakeProjector, event_log: RedisEventLog, streams: Streams
) -> None:
    first = await ingest.ingest(TENANT, [doc("a", "Glaciers carve valleys.")], SMALL)
    again = await ingest.ingest(TENANT, [doc("a", "Glaciers carve valleys.")], SMALL)
    assert again[0].status == "pending" and again[0].event_id == first[0].event_id
    await drain(make_projector())
    third = await ingest.ingest(TENANT, [doc("a", "Glaciers carve valleys.")], SMALL)
    assert (third[0].status, third[0].event_id, third[0].chunks) == (
        "unchanged",
        first[0].event_id,
        1,
    )
    assert await event_log.length(streams.documents) == 1


async def test_redelivery_is_idempotent(
    ingest: LoggedIngest,
    make_projector: MakeProjector,
    index: EdgeIndex,
    embedder: LocalEmbedder,
    raw_redis: RawRedis,
    status: RedisDocStatus,
    streams: Streams,
) -> None:
    docs = [doc("savanna", SAVANNA), doc("b", "Deserts get little rain."), doc("c", "Ice.")]
    await ingest.ingest(TENANT, docs, SMALL)
    await drain(make_projector("p1"))
    before = await points(index)

    # Everything is delivered again, as after a lost checkpoint: first with the applied
    # records gone (everything is rewritten), then with them (everything is skipped).
    for wipe in (True, False):
        if wipe:
            await raw_redis.delete(status.applied_key(embedder.model_id, TENANT))
        await raw_redis.xgroup_setid(streams.documents, GROUP, "0")
        again = make_projector("p2")
        await drain(again)
        assert await points(index) == before
        assert again.counts.skipped == (0 if wipe else len(docs))
        assert again.counts.applied == (len(docs) if wipe else 0)
    for d in docs:
        assert len(before[d.id]) == len(planned(embedder, d, SMALL))


async def test_an_older_version_never_overwrites_a_newer_one(
    ingest: LoggedIngest,
    make_projector: MakeProjector,
    index: EdgeIndex,
    embedder: LocalEmbedder,
    event_log: RedisEventLog,
    streams: Streams,
) -> None:
    old, new = doc("x", SAVANNA), doc("x", "Only zebras now.")
    (first,) = await ingest.ingest(TENANT, [old], SMALL)
    (second,) = await ingest.ingest(TENANT, [new], SMALL)
    # A consumer takes the old version and dies with it; the new one is applied first.
    await event_log.ensure_group(streams.documents, GROUP)
    taken = await event_log.read_group(streams.documents, GROUP, "dead", count=1, block_ms=0)
    assert [e.id for e in taken] == [first.event_id]
    projector = make_projector("alive", claim_idle_ms=100)
    await drain(projector)
    await asyncio.sleep(0.15)
    assert await projector.claims.claim_idle(100) == 1  # XAUTOCLAIM from the dead consumer
    held = await points(index)
    assert sorted(held["x"]) == sorted(
        (pid, second.version) for pid in planned(embedder, new, SMALL, second.event_id)
    )
    view = await ingest.status(TENANT, "x")
    assert view is not None and (view.status, view.version) == ("indexed", second.version)
    assert projector.counts.skipped == 1
    assert await settled(event_log, streams) == (0, 0)

    # Within one batch too, the newest entry of a document wins, whatever the order.
    newest = doc("x", "Giraffes and zebras.")
    await ingest.ingest(TENANT, [doc("x", "An intermediate text.")], SMALL)
    (last,) = await ingest.ingest(TENANT, [newest], SMALL)
    await drain(projector)
    held = await points(index)
    assert [v for _, v in held["x"]] == [last.version] * len(planned(embedder, newest, SMALL))


async def test_a_deleted_document_stays_deleted_when_an_older_upsert_arrives(
    ingest: LoggedIngest,
    make_projector: MakeProjector,
    index: EdgeIndex,
    event_log: RedisEventLog,
    streams: Streams,
    raw_redis: RawRedis,
) -> None:
    await ingest.ingest(TENANT, [doc("keep", "Oceans cover most of the planet.")], SMALL)
    (upsert,) = await ingest.ingest(TENANT, [doc("gone", SAVANNA)], SMALL)
    await event_log.ensure_group(streams.documents, GROUP)
    taken = await event_log.read_group(streams.documents, GROUP, "dead", count=2, block_ms=0)
    assert upsert.event_id in [e.id for e in taken]
    deletion = await ingest.delete(TENANT, "gone")  # known: its upsert is pending
    projector = make_projector("alive", claim_idle_ms=100)
    await drain(projector)
    await asyncio.sleep(0.15)
    assert await projector.claims.claim_idle(100) == 2
    assert set(await points(index)) == {"keep"}
    view = await ingest.status(TENANT, "gone")
    assert view is not None and (view.status, view.event_id) == ("deleted", deletion.event_id)

    # And when the whole stream is delivered again, in order, it ends deleted as well.
    await raw_redis.xgroup_setid(streams.documents, GROUP, "0")
    await drain(make_projector("replayer"))
    assert set(await points(index)) == {"keep"}


async def test_poison_is_dead_lettered_and_does_not_block_the_others(
    ingest: LoggedIngest,
    make_projector: MakeProjector,
    index: EdgeIndex,
    event_log: RedisEventLog,
    streams: Streams,
    raw_redis: RawRedis,
) -> None:
    stream = streams.documents
    await ingest.ingest(TENANT, [doc("before", "Comets have icy cores.")], SMALL)
    garbage = (await raw_redis.xadd(stream, {EVENT_FIELD: b"\xff not json"})).decode()
    fieldless = (await raw_redis.xadd(stream, {b"other": b"x"})).decode()
    future = await event_log.append(
        stream,
        DocumentUpserted(
            schema=99,
            tenant=TENANT,
            doc_id="future",
            version="v",
            title="",
            text="t",
            metadata={},
            chunk_size=64,
            chunk_overlap=0,
            at=0.0,
            traceparent=None,
        ),
    )
    stray = await event_log.append(
        stream,
        FeedbackGiven(
            retrieval_id="r", tenant=TENANT, doc_id="d", chunk_id=None, relevance=1, at=0.0
        ),
    )
    # Decodes, but cannot be chunked (overlap >= size): fails every time it is applied.
    unchunkable = await event_log.append(
        stream,
        DocumentUpserted(
            tenant=TENANT,
            doc_id="bad",
            version="v-bad",
            title="",
            text="Some text here.",
            metadata={},
            chunk_size=16,
            chunk_overlap=16,
            at=0.0,
            traceparent=None,
        ),
    )
    await ingest.ingest(TENANT, [doc("after", "Rivers flow to the sea.")], SMALL)

    projector = make_projector(max_deliveries=2)
    await drain(projector)
    # Everything but the unchunkable one is settled; it waits for its retry.
    assert set(await points(index)) == {"before", "after"}
    info = await event_log.group_info(stream, GROUP)
    assert info is not None and info.pending == 1
    bad = await ingest.status(TENANT, "bad")
    assert bad is None  # no verdict yet: it is retried, not given up on
    await projector.retry_pending()  # second delivery fails too: 2 of 2

    letters = await event_log.range(streams.dead_letter)
    events = [e.event for e in letters]
    assert all(isinstance(e, EventDeadLettered) for e in events)
    by_source = {e.source_id: e for e in events if isinstance(e, EventDeadLettered)}
    assert set(by_source) == {garbage, fieldless, future, stray, unchunkable}
    assert by_source[garbage].raw == b"\xff not json"
    assert "schema 99" in by_source[future].error
    assert "not a document event" in by_source[stray].error
    assert "ValueError" in by_source[unchunkable].error
    assert by_source[unchunkable].deliveries == 2
    assert all(e.group == GROUP and e.source_stream == stream for e in by_source.values())
    view = await ingest.status(TENANT, "bad")
    assert view is not None and view.status == "failed" and "overlap" in (view.error or "")
    assert await settled(event_log, streams) == (0, 0)
    assert projector.counts.dead_lettered == 5


async def test_own_pending_entries_are_read_again_on_restart(
    ingest: LoggedIngest,
    make_projector: MakeProjector,
    index: EdgeIndex,
    event_log: RedisEventLog,
    streams: Streams,
) -> None:
    docs = [doc(f"d{i}", f"Note {i} about tides.") for i in range(5)]
    await ingest.ingest(TENANT, docs, SMALL)
    await event_log.ensure_group(streams.documents, GROUP)
    # Consumer "w1" read them and died before applying any.
    taken = await event_log.read_group(streams.documents, GROUP, "w1", count=10, block_ms=0)
    assert len(taken) == 5
    # Restarted under the same name (and not exclusive: no claims at start).
    restarted = make_projector("w1")
    await start_projector(restarted)
    assert set(await points(index)) == {d.id for d in docs}
    assert await settled(event_log, streams) == (0, 0)


async def test_an_exclusive_projector_takes_over_a_dead_consumers_entries_at_once(
    ingest: LoggedIngest,
    make_projector: MakeProjector,
    index: EdgeIndex,
    event_log: RedisEventLog,
    streams: Streams,
) -> None:
    docs = [doc(f"d{i}", f"Note {i} about moons.") for i in range(4)]
    await ingest.ingest(TENANT, docs, SMALL)
    await event_log.ensure_group(streams.documents, GROUP)
    await event_log.read_group(streams.documents, GROUP, "dead", count=3, block_ms=0)

    shared = make_projector("shared", claim_idle_ms=60_000)
    await drain(shared)  # not exclusive: the dead consumer's three must wait for the idle time
    assert set(await points(index)) == {"d3"}
    owner = make_projector("owner", exclusive=True, claim_idle_ms=60_000)
    await start_projector(owner)
    assert set(await points(index)) == {d.id for d in docs}
    assert await settled(event_log, streams) == (0, 0)


async def test_deaths_of_whole_batches_dead_letter_nothing(
    ingest: LoggedIngest,
    make_projector: MakeProjector,
    index: EdgeIndex,
    event_log: RedisEventLog,
    streams: Streams,
) -> None:
    """A crash loop: the batch is delivered, its process dies, again and again. Deliveries
    pile up, but a batch's death says nothing about any one entry in it."""
    stream = streams.documents
    docs = [doc(f"d{i}", f"Healthy note {i} about rivers.") for i in range(4)]
    await ingest.ingest(TENANT, docs, SMALL)
    await event_log.ensure_group(stream, GROUP)
    await event_log.read_group(stream, GROUP, "dead", count=10, block_ms=0)
    for _ in range(8):  # eight restarts that died with the batch in hand
        await event_log.read_pending(stream, GROUP, "dead", count=10)
    projector = make_projector("owner", exclusive=True, max_deliveries=3)
    await start_projector(projector)
    assert set(await points(index)) == {d.id for d in docs}
    assert await event_log.length(streams.dead_letter) == 0
    assert (
        await event_log.strikes(stream, GROUP, [e.id for e in await event_log.range(stream)]) == {}
    )
    assert await settled(event_log, streams) == (0, 0)


class Hang:
    """The Edge index, except that writing one document's chunks never returns: the
    process applying it is stuck there until it is killed (its task cancelled)."""

    def __init__(self, index: EdgeIndex, doc_id: str) -> None:
        self.index = index
        self.doc_id = doc_id
        self.reached = asyncio.Event()

    async def upsert(self, chunks: Sequence[IndexedChunk]) -> None:
        if any(c.chunk.doc_id == self.doc_id for c in chunks):
            self.reached.set()
            await asyncio.Event().wait()
        await self.index.upsert(chunks)

    def __getattr__(self, name: str) -> object:
        return getattr(self.index, name)


async def test_only_deaths_while_an_entry_is_applied_alone_strike_it(
    ingest: LoggedIngest,
    make_projector: MakeProjector,
    index: EdgeIndex,
    event_log: RedisEventLog,
    streams: Streams,
) -> None:
    stream = streams.documents
    await ingest.ingest(
        TENANT,
        [doc("killer", "Pretend this one crashes the process."), doc("victim", "Innocent.")],
        SMALL,
    )
    # Its first projector took both in one batch and died: no strikes yet.
    await event_log.ensure_group(stream, GROUP)
    await event_log.read_group(stream, GROUP, "dead", count=10, block_ms=0)
    killer_id = (await event_log.range(stream))[0].id
    for deaths in range(1, 4):
        hang = Hang(index, "killer")
        projector = make_projector(f"owner{deaths}", on=hang, exclusive=True, max_deliveries=3)
        task = asyncio.create_task(start_projector(projector))
        await asyncio.wait_for(hang.reached.wait(), 30)
        task.cancel()  # the process dies while the killer is applied on its own
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await event_log.strikes(stream, GROUP, [killer_id]) == {killer_id: deaths}
        # Both went one by one, in stream order while neither had a strike; from then on the
        # innocent entry goes first (fewer strikes), and is indexed whatever the killer does.
        assert set(await points(index)) == (set() if deaths == 1 else {"victim"})

    projector = make_projector("last", exclusive=True, max_deliveries=3)
    await start_projector(projector)  # three strikes: dead-lettered without being applied again
    assert set(await points(index)) == {"victim"}
    (letter,) = [e.event for e in await event_log.range(streams.dead_letter)]
    assert isinstance(letter, EventDeadLettered)
    assert letter.deliveries == 3 and "died 3 times while applying it" in letter.error
    assert letter.source_id == killer_id
    view = await ingest.status(TENANT, "killer")
    assert view is not None and view.status == "failed"
    assert await event_log.strikes(stream, GROUP, [killer_id]) == {}
    assert await settled(event_log, streams) == (0, 0)


async def test_an_index_outage_dead_letters_nothing(
    redis_target: RedisTarget,
    ingest: LoggedIngest,
    make_projector: MakeProjector,
    embedder: LocalEmbedder,
    event_log: RedisEventLog,
    streams: Streams,
    tmp_path: Path,
) -> None:
    docs = [doc(f"d{i}", f"Note {i} about storms.") for i in range(3)]
    await ingest.ingest(TENANT, docs, SMALL)
    broken = EdgeIndex(tmp_path / "other", model_id=embedder.model_id, dim=embedder.dim)
    broken.close()  # every operation now fails, and ready() says so
    projector = make_projector("p", on=broken, max_deliveries=2)
    for _ in range(4):  # however long it lasts: retries of held entries are not deliveries
        with pytest.raises(DependencyUnavailable, match="index does not answer"):
            await (projector.retry_pending() if projector.counts.failures else drain(projector))
    assert projector.counts.failures == 4 * 3
    assert await event_log.length(streams.dead_letter) == 0
    assert (await settled(event_log, streams))[0] == 3
    counts = await delivery_counts(
        redis_target,
        streams.documents,
        GROUP,
        [e.id for e in await event_log.range(streams.documents)],
    )
    assert set(counts.values()) == {1}

    # Restarted on a healthy index: the restart is the second delivery, within the limit.
    healthy = EdgeIndex(tmp_path / "healthy", model_id=embedder.model_id, dim=embedder.dim)
    try:
        await drain(make_projector("p", on=healthy, max_deliveries=2))
        assert set(await points(healthy)) == {d.id for d in docs}
    finally:
        healthy.close()
    assert await event_log.length(streams.dead_letter) == 0
    assert await settled(event_log, streams) == (0, 0)


async def test_embeddings_come_from_the_cache_once_seen(
    ingest: LoggedIngest,
    make_projector: MakeProjector,
    index: EdgeIndex,
    cache: RedisEmbeddingCache,
) -> None:
    await ingest.ingest(TENANT, [doc("one", SAVANNA)], SMALL)
    await drain(make_projector())
    chunks = len((await points(index))["one"])
    assert (cache.stats().hits, cache.stats().misses, cache.stats().writes) == (0, chunks, chunks)
    await ingest.ingest(TENANT, [doc("two", SAVANNA)], SMALL)  # same texts, another document
    await drain(make_projector())
    assert (cache.stats().hits, cache.stats().misses) == (chunks, chunks)
    vectors = {pid: vec for pid, _, vec in await index.all_points(TENANT)}
    held = await points(index)
    ones = sorted(held["one"], key=lambda p: p[0])
    assert Counter(tuple(vectors[p]) for p, _ in ones) == Counter(
        tuple(vectors[p]) for p, _ in held["two"]
    )


async def test_run_applies_as_entries_arrive_and_stops_when_asked(
    ingest: LoggedIngest, make_projector: MakeProjector
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(make_projector(block_ms=200).run(stop))
    try:
        accepted = await ingest.ingest(
            TENANT, [doc("w", "Read your own writes."), doc("v", SAVANNA)], SMALL, wait=True
        )
        assert [a.status for a in accepted] == ["indexed", "indexed"]
        assert accepted[1].chunks >= 3
        deleted = await ingest.delete(TENANT, "w", wait=True)
        assert deleted.status == "deleted"
    finally:
        stop.set()
        started = time.monotonic()
        await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 1.0


async def test_waiting_is_bounded(ingest: LoggedIngest) -> None:
    ingest.wait_seconds = 0.3
    started = time.monotonic()
    (accepted,) = await ingest.ingest(TENANT, [doc("w", "Nobody projects.")], SMALL, wait=True)
    assert accepted.status == "pending"
    assert 0.3 <= time.monotonic() - started < 2.0


async def test_events_carry_the_trace_context(
    ingest: LoggedIngest, event_log: RedisEventLog, streams: Streams
) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await ingest.ingest(TENANT, [doc("t", "Traced.")], SMALL, traceparent=parent)
    await ingest.delete(TENANT, "t", traceparent=parent)
    entries = await event_log.range(streams.documents)
    assert [getattr(e.event, "traceparent", None) for e in entries] == [parent, parent]


async def test_ingest_with_the_log_down_acknowledges_nothing(
    closed_port_url: str, embedder: LocalEmbedder
) -> None:
    log = RedisEventLog(closed_port_url, connect_timeout=0.5)
    store = RedisDocStatus(closed_port_url, connect_timeout=0.5)
    down = LoggedIngest(
        log,
        store,
        streams=Streams(),
        index_id=embedder.model_id,
        max_documents=10,
        wait_seconds=1,
    )
    try:
        with pytest.raises(DependencyUnavailable):
            await down.ingest(TENANT, [doc("a", "Lost?")], SMALL)
        with pytest.raises(DependencyUnavailable):
            await down.status(TENANT, "a")
    finally:
        await log.close()
        await store.close()


async def test_status_records_only_move_forwards(status: RedisDocStatus) -> None:
    newer = Written(event_id="200-1", op="upsert", version="v2", at=2.0)
    older = Written(event_id="199-9", op="upsert", version="v1", at=1.0)
    await status.record_written(TENANT, {"a": newer})
    await status.record_written(TENANT, {"a": older, "b": older})
    assert await status.written(TENANT, ["a", "b", "c"]) == [newer, older, None]
    # Ids compare as numbers, not strings ("1000-0" is after "999-0").
    late = Applied(event_id="1000-0", status="deleted", at=3.0)
    await status.record_applied(
        "m",
        TENANT,
        {"a": Applied(event_id="999-0", status="indexed", version="v", chunks=2, at=1.0)},
    )
    await status.record_applied("m", TENANT, {"a": late})
    await status.record_applied(
        "m", TENANT, {"a": Applied(event_id="999-5", status="failed", error="boom", at=4.0)}
    )
    assert await status.applied("m", TENANT, ["a"]) == [late]
    assert await status.applied("other-model", TENANT, ["a"]) == [None]
    assert await status.both("m", TENANT, ["a"]) == [(newer, late)]


# --- the embeddings API failing (OpenAI-wire server) --------------------------------------


@pytest.fixture()
def fake_api() -> Iterator[FakeEmbeddings]:
    with FakeEmbeddings(dim=64) as server:
        yield server


def api_projector(
    fake_api: FakeEmbeddings,
    tmp_path: Path,
    event_log: RedisEventLog,
    cache: RedisEmbeddingCache,
    status: RedisDocStatus,
    streams: Streams,
    *,
    threshold: int,
) -> tuple[Projector, OpenAIEmbedder, EdgeIndex]:
    api = OpenAIEmbedder(
        api_key="test-key",
        base_url=fake_api.url,
        model="wire",
        dimensions=64,
        timeout_seconds=2,
        batch_size=8,
        max_concurrent_batches=1,
        max_retries=0,
        breaker=CircuitBreaker(failure_threshold=threshold, cooldown_seconds=0.5),
    )
    index = EdgeIndex(tmp_path / "api", model_id=api.model_id, dim=api.dim)
    projector = Projector(
        event_log,
        Indexer(api, index),
        cache,
        status,
        streams=streams,
        consumer="p",
        config=ProjectorConfig(max_deliveries=2, claim_idle_ms=60_000, block_ms=50),
        pause=api.breaker.retry_after,
    )
    return projector, api, index


async def test_an_embeddings_api_outage_dead_letters_nothing(
    redis_target: RedisTarget,
    fake_api: FakeEmbeddings,
    tmp_path: Path,
    event_log: RedisEventLog,
    cache: RedisEmbeddingCache,
    status: RedisDocStatus,
    streams: Streams,
) -> None:
    # The breaker never opens here: every failure reaches the projector as EmbedderUnavailable.
    projector, api, index = api_projector(
        fake_api, tmp_path, event_log, cache, status, streams, threshold=1000
    )
    ingest = logged_ingest(event_log, status, streams, api.model_id, max_documents=10)
    try:
        fake_api.outage = Reply(status=500)
        docs = [doc(f"d{i}", f"Note {i} about storms.") for i in range(3)]
        await ingest.ingest(TENANT, docs, SMALL)
        for _ in range(4):  # retries of held entries are not deliveries
            with pytest.raises(EmbedderUnavailable):
                await (projector.retry_pending() if projector.counts.failures else drain(projector))
        assert await event_log.length(streams.dead_letter) == 0
        ids = [e.id for e in await event_log.range(streams.documents)]
        counts = await delivery_counts(redis_target, streams.documents, GROUP, ids)
        assert set(counts.values()) == {1}  # max_deliveries is 2: none is near it

        fake_api.outage = None
        await projector.retry_pending()
        assert set(await points(index)) == {d.id for d in docs}
        assert await settled(event_log, streams) == (0, 0)
        assert await event_log.length(streams.dead_letter) == 0
    finally:
        index.close()
        await api.aclose()


async def test_an_open_breaker_pauses_the_projector(
    fake_api: FakeEmbeddings,
    tmp_path: Path,
    event_log: RedisEventLog,
    cache: RedisEmbeddingCache,
    status: RedisDocStatus,
    streams: Streams,
) -> None:
    projector, api, index = api_projector(
        fake_api, tmp_path, event_log, cache, status, streams, threshold=1
    )
    ingest = logged_ingest(event_log, status, streams, api.model_id, max_documents=10)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        fake_api.outage = Reply(status=429, retry_after=1)
        await ingest.ingest(TENANT, [doc("first", "Storms at sea.")], SMALL)
        await asyncio.sleep(0.5)
        assert api.breaker.state != "closed"
        await ingest.ingest(TENANT, [doc(f"later{i}", f"Later note {i}.") for i in range(3)], SMALL)
        await asyncio.sleep(2.5)
        # One failure opened it (Retry-After 1 s); since then only probes, one a second.
        assert fake_api.requests_count() <= 4
        assert projector.counts.paused_waits > 0
        info = await event_log.group_info(streams.documents, GROUP)
        assert info is not None and info.lag == 3  # the later ones were not even read
        assert await event_log.length(streams.dead_letter) == 0

        fake_api.outage = None
        for _ in range(50):
            if len(await points(index)) == 4:
                break
            await asyncio.sleep(0.1)
        assert set(await points(index)) == {"first", "later0", "later1", "later2"}
        assert await event_log.length(streams.dead_letter) == 0
    finally:
        stop.set()
        await task
        index.close()
        await api.aclose()


async def test_dead_consumers_leave_the_group_once_idle_and_drained(
    ingest: LoggedIngest,
    make_projector: MakeProjector,
    event_log: RedisEventLog,
    raw_redis: RawRedis,
    streams: Streams,
) -> None:
    """Every process joins as its own consumer; those of dead processes must not pile up."""
    (first, _) = await ingest.ingest(TENANT, [doc("a", SAVANNA), doc("b", "Zebras.")], SMALL)
    await event_log.ensure_group(streams.documents, GROUP)
    # "holder" dies holding an entry; "idle" dies with nothing pending.
    taken = await event_log.read_group(streams.documents, GROUP, "holder", count=1, block_ms=0)
    assert [e.id for e in taken] == [first.event_id]
    projector = make_projector("alive", claim_idle_ms=100, forget_idle_ms=1000)
    await projector.step(0)  # "alive" joins and applies the other entry
    await raw_redis.xgroup_createconsumer(streams.documents, GROUP, "idle")
    assert await projector.claims.forget_dead_consumers() == []  # not idle long enough yet
    by_name = {c.name: c for c in await event_log.consumers(streams.documents, GROUP)}
    assert set(by_name) == {"holder", "idle", "alive"}
    assert (by_name["holder"].pending, by_name["idle"].pending) == (1, 0)

    await asyncio.sleep(1.05)
    # "holder" still holds an entry: it stays until its entry is claimed.
    assert await projector.claims.forget_dead_consumers() == ["idle"]
    assert not await event_log.forget_consumer(
        streams.documents, GROUP, "holder", min_idle_ms=0
    )  # the atomic check refuses too: deleting it would drop its entry from the group
    assert await projector.claims.claim_idle(100) == 1
    deadline = time.monotonic() + 5
    while (removed := await projector.claims.forget_dead_consumers()) == []:
        assert time.monotonic() < deadline, "the drained dead consumer was never removed"
        await asyncio.sleep(0.1)
    assert removed == ["holder"]
    assert [c.name for c in await event_log.consumers(streams.documents, GROUP)] == ["alive"]
    assert await settled(event_log, streams) == (0, 0)
    view = await ingest.status(TENANT, "a")
    assert view is not None and view.status == "indexed"

    # Housekeeping runs in the loop: a consumer that died since goes on its own.
    await raw_redis.xgroup_createconsumer(streams.documents, GROUP, "gone")
    stop = asyncio.Event()
    task = asyncio.create_task(
        make_projector("alive", claim_idle_ms=100, forget_idle_ms=300, block_ms=50).run(stop)
    )
    try:
        deadline = time.monotonic() + 5
        while "gone" in {c.name for c in await event_log.consumers(streams.documents, GROUP)}:
            assert time.monotonic() < deadline, "the dead consumer was never removed"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert await event_log.consumers(f"{streams.prefix}nothing", GROUP) == []
    assert not await event_log.forget_consumer(
        f"{streams.prefix}nothing", GROUP, "x", min_idle_ms=0
    )
