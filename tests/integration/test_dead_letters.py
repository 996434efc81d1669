"""Dead letters against a real Redis (the machine's and an embedded Valkey), a real projector,
Edge index and embedder: listing, requeue after the cause is gone, superseded requeues (also
against an ingest racing it), tenants, drop, and what cannot be requeued."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from app.adapters.embedders.local import LocalEmbedder
from app.adapters.qdrant.edge_index import EdgeIndex
from app.adapters.redis.cache import RedisEmbeddingCache
from app.adapters.redis.client import RedisTarget
from app.adapters.redis.dead_letters import RedisDeadLetters
from app.adapters.redis.doc_status import RedisDocStatus
from app.adapters.redis.streams import EVENT_FIELD, RedisEventLog
from app.domain.doc_status import Written
from app.domain.events import (
    DocumentUpserted,
    EventDeadLettered,
    FeedbackGiven,
    Streams,
    encode_event,
)
from app.domain.records import ChunkingParams, DocumentIn, IndexedChunk
from app.errors import DependencyUnavailable, InvalidRequest, NotFound
from app.services.dead_letters import DeadLetter, DeadLetters, RequeueCommand
from app.services.indexing import Indexer
from app.services.ingest import LoggedIngest
from app.services.projector import GROUP, Projector, ProjectorConfig
from app.telemetry import schema
from tests.integration.projector_driver import start as start_projector
from tests.integration.redis_fixtures import ALL_BACKENDS, RawRedis

pytest_plugins = ("tests.integration.redis_fixtures",)
pytestmark = pytest.mark.anyio
# Dead letters (and the requeue script) hold on every topology, a Redis Cluster included.
REDIS_BACKENDS = ALL_BACKENDS

TENANT = "acme"
OTHER = "globex"
SMALL = ChunkingParams(size=24, overlap=0)


class Refusing:
    """The Edge index, except that writing or deleting the chunks of the documents in
    `refused` fails, as a poison event's write would; emptying the set is the operator
    removing the cause."""

    def __init__(self, index: EdgeIndex) -> None:
        self.index = index
        self.refused: set[str] = set()

    async def upsert(self, chunks: Sequence[IndexedChunk]) -> None:
        refused = {c.chunk.doc_id for c in chunks} & self.refused
        if refused:
            raise RuntimeError(f"refusing to write {sorted(refused)}")
        await self.index.upsert(chunks)

    async def delete_document(self, tenant: str, doc_id: str, **only: str | None) -> int:
        # Deletes and sweeps fail; dropping what one event wrote (`written_by`) goes
        # through, as the projector's clean-up after giving up on an entry must.
        if doc_id in self.refused and only.get("written_by") is None:
            raise RuntimeError(f"refusing to delete {doc_id!r}")
        return await self.index.delete_document(tenant, doc_id, **only)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self.index, name)


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
def refusing(index: EdgeIndex) -> Refusing:
    return Refusing(index)


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
async def store(redis_target: RedisTarget, prefix: str) -> AsyncIterator[RedisDeadLetters]:
    made = RedisDeadLetters(redis_target, prefix=prefix)
    yield made
    await made.close()


@pytest.fixture()
def service(
    event_log: RedisEventLog,
    store: RedisDeadLetters,
    status: RedisDocStatus,
    streams: Streams,
    embedder: LocalEmbedder,
) -> DeadLetters:
    return DeadLetters(
        event_log, store, status, streams=streams, index_id=embedder.model_id, scan_limit=50
    )


@pytest.fixture()
def ingest(
    event_log: RedisEventLog, status: RedisDocStatus, streams: Streams, embedder: LocalEmbedder
) -> LoggedIngest:
    return LoggedIngest(
        event_log,
        status,
        streams=streams,
        index_id=embedder.model_id,
        max_documents=100,
        wait_seconds=10,
    )


@pytest.fixture()
def projector(
    event_log: RedisEventLog,
    embedder: LocalEmbedder,
    refusing: Refusing,
    cache: RedisEmbeddingCache,
    status: RedisDocStatus,
    streams: Streams,
) -> Projector:
    return Projector(
        event_log,
        Indexer(embedder, refusing),  # type: ignore[arg-type]
        cache,
        status,
        streams=streams,
        consumer="p1",
        config=ProjectorConfig(max_deliveries=2, claim_idle_ms=60_000),
    )


async def drain(projector: Projector) -> None:
    await start_projector(projector)
    while await projector.step(0):
        pass


async def dead_lettered(
    projector: Projector, event_log: RedisEventLog, streams: Streams, count: int
) -> None:
    """Project, retrying what fails, until the dead-letter stream holds `count` entries."""
    await drain(projector)
    for _ in range(20):
        if await event_log.length(streams.dead_letter) >= count:
            return
        await projector.retry_pending()
    raise AssertionError("the refused documents were never dead-lettered")


def doc(doc_id: str, text: str) -> DocumentIn:
    return DocumentIn(id=doc_id, text=text)


def gauge() -> float:
    value = REGISTRY.get_sample_value(schema.DEAD_LETTERS_WAITING)
    assert value is not None
    return value


async def only_letter(service: DeadLetters, tenant: str | None = None) -> DeadLetter:
    page = await service.page(tenant=tenant)
    assert len(page.letters) == 1, page
    return page.letters[0]


async def test_a_requeued_document_is_indexed_once_its_cause_is_gone(
    ingest: LoggedIngest,
    projector: Projector,
    refusing: Refusing,
    index: EdgeIndex,
    service: DeadLetters,
    event_log: RedisEventLog,
    streams: Streams,
) -> None:
    refusing.refused = {"comet"}
    (accepted,) = await ingest.ingest(TENANT, [doc("comet", "Comets have icy cores.")], SMALL)
    await ingest.ingest(TENANT, [doc("river", "Rivers flow to the sea.")], SMALL)
    before = gauge()
    await dead_lettered(projector, event_log, streams, 1)
    assert gauge() == before + 1  # the projector's dead-lettering moves the gauge at once

    view = await ingest.status(TENANT, "comet")
    assert view is not None and view.status == "failed"
    letter = await only_letter(service)
    assert (letter.tenant, letter.doc_id, letter.source_id) == (TENANT, "comet", accepted.event_id)
    assert (letter.event_type, letter.version, letter.problem) == (
        "DocumentUpserted",
        accepted.version,
        None,
    )
    assert "refusing to write" in letter.error
    shown, document = await service.show(letter.id, tenant=TENANT)
    assert shown == letter and document is not None and document.status == "failed"

    refusing.refused = set()  # the operator fixed what made it fail
    done = await service.requeue(letter.id, tenant=TENANT)
    assert done.outcome == "requeued" and done.letter == letter
    assert gauge() == before
    view = await ingest.status(TENANT, "comet")
    assert view is not None
    assert (view.status, view.event_id, view.version) == (
        "pending",
        done.event_id,
        accepted.version,
    )
    assert await event_log.length(streams.dead_letter) == 0
    requeued = await event_log.get(streams.documents, done.event_id)
    assert requeued is not None and requeued.raw == letter.raw  # the original event, again

    await drain(projector)
    view = await ingest.status(TENANT, "comet")
    assert view is not None and (view.status, view.version) == ("indexed", accepted.version)
    state = await index.document(TENANT, "comet")
    assert state is not None and state.version == accepted.version and state.chunks >= 1

    # Idempotent: the dead letter is gone, so a second requeue (or a drop) finds nothing.
    with pytest.raises(NotFound):
        await service.requeue(letter.id, tenant=TENANT)
    with pytest.raises(NotFound):
        await service.drop(letter.id, tenant=TENANT)


async def test_a_newer_version_ingested_meanwhile_wins(
    ingest: LoggedIngest,
    projector: Projector,
    refusing: Refusing,
    index: EdgeIndex,
    service: DeadLetters,
    event_log: RedisEventLog,
    streams: Streams,
) -> None:
    refusing.refused = {"comet"}
    await ingest.ingest(TENANT, [doc("comet", "Comets have icy cores.")], SMALL)
    await dead_lettered(projector, event_log, streams, 1)
    letter = await only_letter(service)

    refusing.refused = set()
    (newer,) = await ingest.ingest(TENANT, [doc("comet", "Comets grow tails near the sun.")], SMALL)
    await drain(projector)
    length = await event_log.length(streams.documents)

    done = await service.requeue(letter.id, tenant=TENANT)
    assert (done.outcome, done.event_id) == ("superseded", newer.event_id)
    assert await event_log.length(streams.documents) == length  # nothing appended
    assert await event_log.length(streams.dead_letter) == 0  # the stale letter is gone
    await drain(projector)
    view = await ingest.status(TENANT, "comet")
    assert view is not None and (view.status, view.version) == ("indexed", newer.version)
    state = await index.document(TENANT, "comet")
    assert state is not None and state.version == newer.version


async def test_a_newer_change_without_a_written_record_still_wins(
    ingest: LoggedIngest,
    projector: Projector,
    refusing: Refusing,
    service: DeadLetters,
    event_log: RedisEventLog,
    status: RedisDocStatus,
    streams: Streams,
) -> None:
    """The write side appends, then records: a requeue between the two (or after a failed
    record) must find the newer entry in the stream itself, or in the applied record."""
    refusing.refused = {"a", "b"}
    await ingest.ingest(TENANT, [doc("a", "Alpha text."), doc("b", "Beta text.")], SMALL)
    await dead_lettered(projector, event_log, streams, 2)
    letters = {x.doc_id: x for x in (await service.page(tenant=TENANT)).letters}
    refusing.refused = set()

    def newer(doc_id: str) -> DocumentUpserted:
        return DocumentUpserted(
            tenant=TENANT,
            doc_id=doc_id,
            version=f"v-newer-{doc_id}",
            title="",
            text=f"A newer text of {doc_id}.",
            metadata={},
            chunk_size=SMALL.size,
            chunk_overlap=SMALL.overlap,
            at=0.0,
            traceparent=None,
        )

    # "a": appended, its written record not stored yet, not yet projected.
    appended = await event_log.append(streams.documents, newer("a"))
    done = await service.requeue(letters["a"].id, tenant=TENANT)
    assert (done.outcome, done.event_id) == ("superseded", appended)

    # "b": appended and projected, its written record never stored (Redis failed between
    # the write side's two round trips): the applied record names it.
    applied = await event_log.append(streams.documents, newer("b"))
    await drain(projector)
    (written,) = await status.written(TENANT, ["b"])
    assert written is not None and written.event_id != applied
    done = await service.requeue(letters["b"].id, tenant=TENANT)
    assert (done.outcome, done.event_id) == ("superseded", applied)


async def test_requeue_racing_an_ingest_never_lets_the_old_version_win(
    ingest: LoggedIngest,
    projector: Projector,
    refusing: Refusing,
    index: EdgeIndex,
    service: DeadLetters,
    event_log: RedisEventLog,
    streams: Streams,
) -> None:
    """Whichever lands first, the document ends at the version the ingest sent: requeued
    first, the ingest follows it; ingested first, the requeue is superseded."""
    ids = [f"race-{i}" for i in range(6)]
    refusing.refused = set(ids)
    await ingest.ingest(TENANT, [doc(i, f"First text of {i}.") for i in ids], SMALL)
    await dead_lettered(projector, event_log, streams, len(ids))
    letters = {x.doc_id: x for x in (await service.page(tenant=TENANT, limit=100)).letters}
    refusing.refused = set()

    outcomes = []
    for n, doc_id in enumerate(ids):
        later = doc(doc_id, f"Second text of {doc_id}.")
        requeue = service.requeue(letters[doc_id].id, tenant=TENANT)
        newer = ingest.ingest(TENANT, [later], SMALL)
        # Alternate which starts first; both are in flight together either way.
        if n % 2:
            done, (accepted,) = await asyncio.gather(requeue, newer)
        else:
            (accepted,), done = await asyncio.gather(newer, requeue)
        outcomes.append(done.outcome)
        if done.outcome == "superseded":
            assert done.event_id == accepted.event_id
    await drain(projector)
    for doc_id in ids:
        view = await ingest.status(TENANT, doc_id)
        assert view is not None and view.status == "indexed"
        state = await index.document(TENANT, doc_id)
        assert state is not None and state.version == view.version
        (accepted,) = await ingest.ingest(TENANT, [doc(doc_id, f"Second text of {doc_id}.")], SMALL)
        assert accepted.status == "unchanged", outcomes  # the second text is what is indexed


async def test_listing_pages_both_ways_and_keeps_tenants_apart(
    service: DeadLetters,
    event_log: RedisEventLog,
    streams: Streams,
    raw_redis: RawRedis,
) -> None:
    def letter_of(tenant: str, doc_id: str) -> EventDeadLettered:
        event = DocumentUpserted(
            tenant=tenant,
            doc_id=doc_id,
            version="v1",
            title="",
            text="t",
            metadata={},
            chunk_size=64,
            chunk_overlap=0,
            at=0.0,
            traceparent=None,
        )
        return EventDeadLettered(
            source_stream=streams.documents,
            source_id=f"{len(doc_id)}-{doc_id[-1]}",
            group=GROUP,
            raw=encode_event(event),
            error="boom",
            deliveries=5,
            at=1.0,
        )

    ids = []
    for i in range(7):
        tenant = TENANT if i % 2 == 0 else OTHER
        ids.append(await event_log.append(streams.dead_letter, letter_of(tenant, f"d{i}")))
    ours = [ids[i] for i in range(0, 7, 2)]  # d0, d2, d4, d6

    first = await service.page(tenant=TENANT, limit=3)
    assert [x.id for x in first.letters] == ours[::-1][:3] and first.next == ours[1]
    second = await service.page(tenant=TENANT, limit=3, after=first.next)
    assert [x.id for x in second.letters] == [ours[0]] and second.next is None
    oldest = await service.page(tenant=TENANT, order="oldest", limit=2)
    assert [x.id for x in oldest.letters] == ours[:2]
    rest = await service.page(tenant=TENANT, order="oldest", after=oldest.next)
    assert [x.id for x in rest.letters] == ours[2:] and rest.next is None
    assert {x.tenant for x in (await service.page(tenant=None, limit=100)).letters} == {
        TENANT,
        OTHER,
    }
    assert (await service.page(tenant="nobody")).letters == []
    for smallest in ("0-0", "000-0"):
        assert (await service.page(tenant=None, after=smallest)).letters == []
    largest = f"{2**64 - 1}-{2**64 - 1}"
    assert (await service.page(tenant=None, order="oldest", after=largest)).letters == []
    padded = await service.page(tenant=TENANT, limit=3, after="0" + first.next)
    assert padded.letters == second.letters
    with pytest.raises(InvalidRequest) as bad:
        await service.page(tenant=TENANT, after="yesterday")
    assert bad.value.field == "after"

    theirs = ids[1]
    for act in (service.get, service.show, service.requeue, service.drop):
        with pytest.raises(NotFound):
            await act(theirs, tenant=TENANT)  # type: ignore[operator]
    assert (await service.get(theirs, tenant=OTHER)).doc_id == "d1"
    for unknown in ("1-1", "nope", ids[0].split("-")[0], "99999999999999999999-0", ""):
        with pytest.raises(NotFound):
            await service.get(unknown, tenant=None)

    dropped = await service.drop(theirs, tenant=OTHER)
    assert dropped.doc_id == "d1"
    assert await event_log.length(streams.dead_letter) == 6
    with pytest.raises(NotFound):
        await service.drop(theirs, tenant=OTHER)


async def test_what_cannot_be_requeued_is_refused_and_can_be_dropped(
    ingest: LoggedIngest,
    projector: Projector,
    service: DeadLetters,
    event_log: RedisEventLog,
    streams: Streams,
    raw_redis: RawRedis,
) -> None:
    stream = streams.documents
    await raw_redis.xadd(stream, {EVENT_FIELD: b"\xff not json"})
    future = DocumentUpserted(
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
    )
    await event_log.append(stream, future)
    await event_log.append(
        stream,
        FeedbackGiven(
            retrieval_id="r", tenant=TENANT, doc_id="d", chunk_id=None, relevance=1, at=0.0
        ),
    )
    await drain(projector)
    letters = (await service.page(tenant=None, order="oldest")).letters
    garbage, newer_schema, stray = letters
    assert garbage.tenant is None and "does not decode" in (garbage.problem or "")
    # Unreadable by this build, yet its tenant is known: shown to that tenant only.
    assert (newer_schema.tenant, newer_schema.doc_id) == (TENANT, "future")
    assert "schema 99" in (newer_schema.problem or "")
    assert stray.tenant == TENANT and "not a document event" in (stray.problem or "")
    assert [x.id for x in (await service.page(tenant=TENANT, order="oldest")).letters] == [
        newer_schema.id,
        stray.id,
    ]

    length = await event_log.length(stream)
    for letter in letters:
        with pytest.raises(InvalidRequest) as refused:
            await service.requeue(letter.id, tenant=None)
        assert refused.value.status == 409 and "cannot be requeued" in refused.value.message
    assert await event_log.length(stream) == length
    for letter in letters:
        await service.drop(letter.id, tenant=None)
    assert await service.count() == 0


async def test_requeue_waits_while_too_many_entries_are_unprojected(
    ingest: LoggedIngest,
    projector: Projector,
    refusing: Refusing,
    service: DeadLetters,
    event_log: RedisEventLog,
    streams: Streams,
) -> None:
    refusing.refused = {"comet"}
    await ingest.ingest(TENANT, [doc("comet", "Comets have icy cores.")], SMALL)
    await dead_lettered(projector, event_log, streams, 1)
    letter = await only_letter(service)
    refusing.refused = set()
    # More unprojected entries than the scan limit (50 here): the requeue cannot tell.
    await ingest.ingest(TENANT, [doc(f"n{i}", f"Note {i}.") for i in range(60)], SMALL)
    with pytest.raises(InvalidRequest) as refused:
        await service.requeue(letter.id, tenant=TENANT)
    assert (refused.value.status, refused.value.code) == (409, "projector_behind")
    assert await service.count() == 1
    await drain(projector)
    assert (await service.requeue(letter.id, tenant=TENANT)).outcome == "requeued"


async def test_an_unreachable_redis_is_an_outage(
    closed_port_url: str, event_log: RedisEventLog, status: RedisDocStatus, streams: Streams
) -> None:
    down_log = RedisEventLog(closed_port_url, pool_size=1, connect_timeout=0.2)
    down_status = RedisDocStatus(closed_port_url, pool_size=1, connect_timeout=0.2)
    down = RedisDeadLetters(closed_port_url, connect_timeout=0.2)
    service = DeadLetters(down_log, down, down_status, streams=streams, index_id="m")
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: service.page(tenant=None),
        lambda: service.page(tenant=None, order="oldest"),
        lambda: service.get("1-0", tenant=None),
        lambda: service.drop("1-0", tenant=None),
        lambda: down.requeue(_command(streams), scan_limit=10),
    ]
    try:
        for call in calls:
            with pytest.raises(DependencyUnavailable):
                await call()
    finally:
        await down.close()
        await down_status.close()
        await down_log.close()


def _command(streams: Streams) -> RequeueCommand:
    return RequeueCommand(
        letter_stream=streams.dead_letter,
        letter_id="1-0",
        stream=streams.documents,
        group=GROUP,
        index_id="m",
        tenant=TENANT,
        doc_id="d",
        after="1-0",
        event=b"{}",
        op="upsert",
        version="v",
        at=0.0,
    )


async def test_the_requeue_records_a_written_record_the_status_store_reads(
    ingest: LoggedIngest,
    projector: Projector,
    refusing: Refusing,
    service: DeadLetters,
    event_log: RedisEventLog,
    status: RedisDocStatus,
    streams: Streams,
) -> None:
    refusing.refused = {"gone"}
    await ingest.ingest(TENANT, [doc("gone", "Soon deleted.")], SMALL)
    await dead_lettered(projector, event_log, streams, 1)
    refusing.refused = set()
    letter = await only_letter(service)
    done = await service.requeue(letter.id, tenant=TENANT)
    (written,) = await status.written(TENANT, ["gone"])
    assert isinstance(written, Written)
    assert (written.event_id, written.op, written.version) == (
        done.event_id,
        "upsert",
        letter.version,
    )


async def test_a_requeued_delete_deletes(
    ingest: LoggedIngest,
    projector: Projector,
    refusing: Refusing,
    index: EdgeIndex,
    service: DeadLetters,
    event_log: RedisEventLog,
    streams: Streams,
) -> None:
    await ingest.ingest(TENANT, [doc("old", "An outdated note.")], SMALL)
    await drain(projector)
    refusing.refused = {"old"}
    deleted = await ingest.delete(TENANT, "old")
    await dead_lettered(projector, event_log, streams, 1)
    letter = await only_letter(service)
    assert (letter.event_type, letter.source_id, letter.version) == (
        "DocumentDeleted",
        deleted.event_id,
        None,
    )
    assert await index.document(TENANT, "old") is not None  # the index kept what it had

    refusing.refused = set()
    done = await service.requeue(letter.id, tenant=TENANT)
    view = await ingest.status(TENANT, "old")
    assert view is not None and (view.status, view.version) == ("pending", None)
    await drain(projector)
    view = await ingest.status(TENANT, "old")
    assert view is not None and (view.status, view.event_id) == ("deleted", done.event_id)
    assert await index.document(TENANT, "old") is None
