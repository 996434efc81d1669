"""Export and import of the document log against a real Redis (the machine's, an embedded Valkey
and a Redis Cluster): the round trip is byte-exact, a cut is a cut, a writer or a compaction
racing either side is noticed, a non-empty target is refused, an interrupted import resumes."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.adapters.backup_file import BackupReader, BackupWriter
from app.adapters.redis import archive
from app.adapters.redis.archive import ExportProgress, ImportProgress, export_log, import_log
from app.adapters.redis.client import RedisClient, RedisTarget, close_client, durable_client
from app.adapters.redis.doc_status import RedisDocStatus
from app.adapters.redis.rewrite import RedisLogRewriter
from app.adapters.redis.streams import EVENT_FIELD, RedisEventLog
from app.domain.document_log import newest_per_document
from app.domain.events import DocumentUpserted, FeedbackGiven, Streams, encode_event
from app.domain.records import ChunkingParams, DocumentIn, id_key
from app.errors import EventLogError
from app.services.compaction import Compaction
from app.services.ingest import LoggedIngest
from tests.integration.redis_fixtures import ALL_BACKENDS, delete_prefixed, sync_client

pytest_plugins = ("tests.integration.redis_fixtures",)
pytestmark = pytest.mark.anyio
REDIS_BACKENDS = ALL_BACKENDS

CHUNKING = ChunkingParams(size=64, overlap=8)


@pytest.fixture()
def other_prefix(redis_target: RedisTarget) -> Iterator[str]:
    """A second prefix (its own hash tag): where a backup is restored."""
    value = f"test:{{{uuid.uuid4().hex}}}:"
    yield value
    delete_prefixed(redis_target, value)


@pytest.fixture()
async def client(redis_target: RedisTarget) -> AsyncIterator[RedisClient]:
    made = durable_client(redis_target, pool_size=2, socket_timeout=10.0, connect_timeout=2.0)
    yield made
    await close_client(made)


def doc(doc_id: str, text: str) -> DocumentIn:
    return DocumentIn(id=doc_id, title=f"Title {doc_id}", text=text, metadata={"n": len(text)})


async def fill(redis_target: RedisTarget, prefix: str) -> None:
    """A log as the write side leaves it: two tenants (one doc id in both), three versions of
    most documents, deletions, a document deleted and ingested again, an entry that is no
    event, one without an `event` field, and feedback."""
    streams = Streams(prefix=prefix)
    log = RedisEventLog(redis_target, pool_size=2)
    status = RedisDocStatus(redis_target, prefix=prefix, pool_size=2)
    ingest = LoggedIngest(
        log, status, streams=streams, index_id="m", max_documents=100, wait_seconds=0
    )
    raw = sync_client(redis_target)
    try:
        for version in range(3):
            await ingest.ingest(
                "acme", [doc(f"d{i}", f"v{version} of {i}") for i in range(8)], CHUNKING
            )
            raw.xadd(streams.documents, {EVENT_FIELD: b"not json"})
        await ingest.ingest("globex", [doc("d0", "globex's own d0")], CHUNKING)
        for doc_id in ("d2", "d5"):
            await ingest.delete("acme", doc_id)
        await ingest.ingest("acme", [doc("d5", "d5 is back")], CHUNKING)
        raw.xadd(streams.documents, {b"other": b"field"})
        for i in range(3):
            await log.append(
                streams.feedback,
                FeedbackGiven(
                    retrieval_id=f"r{i}",
                    tenant="acme",
                    doc_id="d1",
                    chunk_id=None,
                    relevance=1,
                    at=1.0,
                ),
            )
        raw.xadd(streams.feedback, {b"other": b"field"})
    finally:
        raw.close()
        await status.close()
        await log.close()


def rows(target: RedisTarget, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    client = sync_client(target)
    try:
        return list(client.xrange(stream))
    finally:
        client.close()


def hashes(target: RedisTarget, prefix: str) -> dict[bytes, dict[bytes, bytes]]:
    client = sync_client(target)
    try:
        keys = client.scan_iter(match=f"{prefix}docs:*", count=1000)
        return {key[len(prefix) :]: client.hgetall(key) for key in keys}
    finally:
        client.close()


def last_id(target: RedisTarget, stream: str) -> bytes:
    client = sync_client(target)
    try:
        return client.xinfo_stream(stream)["last-generated-id"]
    finally:
        client.close()


async def export(
    client: RedisClient, prefix: str, path: Path, *, feedback: bool = True, **kw: Any
) -> ExportProgress:
    with BackupWriter(str(path)) as writer:
        return await export_log(
            client, Streams(prefix), writer, feedback=feedback, build="test", created_at=1.0, **kw
        )


async def restore(
    client: RedisClient, target: RedisTarget, prefix: str, path: Path, **kw: Any
) -> ImportProgress:
    return await import_log(client, target, Streams(prefix), BackupReader(path), **kw)


async def test_a_round_trip_keeps_each_documents_newest_entry_byte_for_byte(
    redis_target: RedisTarget, client: RedisClient, prefix: str, other_prefix: str, tmp_path: Path
) -> None:
    await fill(redis_target, prefix)
    source, copy = Streams(prefix), Streams(other_prefix)
    everything = rows(redis_target, source.documents)
    log = RedisEventLog(redis_target, pool_size=2)
    try:
        entries = await log.range(source.documents, count=10_000)
    finally:
        await log.close()
    newest = sorted(newest_per_document(entries).values(), key=lambda e: id_key(e.id))
    wanted = [(e.id.encode(), {EVENT_FIELD: e.raw}) for e in newest]
    assert len(wanted) == 9 and len(everything) == 8 * 3 + 3 + 1 + 2 + 1 + 1

    done = await export(client, prefix, tmp_path / "log.ragbak")
    assert (done.documents, done.tombstones, done.feedback) == (9, 1, 3)
    assert done.read == 2 * len(everything) + 4
    loaded = await restore(client, redis_target, other_prefix, tmp_path / "log.ragbak")
    assert (loaded.loaded, loaded.documents, loaded.tombstones, loaded.feedback) == (12, 9, 1, 3)

    # Ids, field and bytes as stored, in stream order: the newest entry of each document.
    assert rows(redis_target, copy.documents) == wanted
    assert rows(redis_target, copy.feedback) == [
        r for r in rows(redis_target, source.feedback) if EVENT_FIELD in r[1]
    ]
    # The written records are the ones the write side stored, so status reads right at once.
    assert hashes(redis_target, other_prefix) == hashes(redis_target, prefix)
    # Appends after the restore sort after everything the source ever wrote.
    assert last_id(redis_target, copy.documents) == last_id(redis_target, source.documents)
    assert last_id(redis_target, copy.feedback) == last_id(redis_target, source.feedback)

    # Exporting the restored log gives the same records (only the header's prefix differs).
    again = await export(client, other_prefix, tmp_path / "again.ragbak")
    assert list(BackupReader(tmp_path / "again.ragbak").records()) == list(
        BackupReader(tmp_path / "log.ragbak").records()
    )
    assert (again.documents, again.feedback, again.left_out) == (9, 3, 0)


async def test_the_export_is_a_cut_at_its_start(
    redis_target: RedisTarget, client: RedisClient, prefix: str, tmp_path: Path
) -> None:
    await fill(redis_target, prefix)
    streams = Streams(prefix)
    writer = sync_client(redis_target)
    late: list[bytes] = []

    late_doc = encode_event(
        DocumentUpserted(
            tenant="acme",
            doc_id="late",
            version="v",
            title="Late",
            text="accepted while the export ran",
            metadata={},
            chunk_size=64,
            chunk_overlap=8,
            at=2.0,
            traceparent=None,
        )
    )

    def append_meanwhile(progress: ExportProgress) -> None:
        # A new document and new feedback, accepted while the export reads.
        if len(late) < 4:
            late.append(writer.xadd(streams.documents, {EVENT_FIELD: late_doc}))
            late.append(writer.xadd(streams.feedback, {EVENT_FIELD: b"{}"}))

    try:
        done = await export(client, prefix, tmp_path / "cut.ragbak", on_progress=append_meanwhile)
    finally:
        writer.close()
    assert late
    ids = {r.id.encode() for r in BackupReader(tmp_path / "cut.ragbak").records()}
    assert not ids & set(late)
    assert (done.documents, done.feedback) == (9, 3)


async def test_entries_deleted_under_the_export_fail_it_and_leave_no_file(
    redis_target: RedisTarget, client: RedisClient, prefix: str, tmp_path: Path
) -> None:
    """A compaction or an erasure deleting entries while the export reads could leave a
    document out of it (its old entry gone, its new one past the cut): refused."""
    await fill(redis_target, prefix)
    streams = Streams(prefix)
    first = rows(redis_target, streams.documents)[0][0]
    raw = sync_client(redis_target)

    def compact(progress: ExportProgress) -> None:
        raw.xdel(streams.documents, first)

    try:
        with pytest.raises(EventLogError, match="changed under the export"):
            await export(client, prefix, tmp_path / "x.ragbak", on_progress=compact)
    finally:
        raw.close()
    assert list(tmp_path.iterdir()) == []


async def compact(target: RedisTarget, prefix: str) -> None:
    """The service's own compaction of the document stream, run to the end."""
    log = RedisEventLog(target, pool_size=2)
    rewriter = RedisLogRewriter(target)
    status = RedisDocStatus(target, prefix=prefix, pool_size=2)
    try:
        await Compaction(
            event_log=log,
            rewriter=rewriter,
            status=status,
            index_id="m",
            streams=Streams(prefix),
            tombstone_retention_seconds=3600,
        ).run()
    finally:
        await rewriter.close()
        await status.close()
        await log.close()


async def test_a_compaction_between_the_passes_fails_the_export_and_a_rerun_succeeds(
    redis_target: RedisTarget, client: RedisClient, prefix: str, tmp_path: Path
) -> None:
    """The real compaction (a rewrite switched in with RENAME) between the fold and the copy:
    superseded entries the fold counted are gone, so the export refuses; run again after it,
    the export holds the same documents as a compacted log should."""
    await fill(redis_target, prefix)
    ran: list[bool] = []

    def compact_between(progress: ExportProgress) -> None:
        if progress.phase == "writing" and not ran:
            ran.append(True)
            # The callback is synchronous: the compaction runs to its end on a loop of its own.
            worker = threading.Thread(target=asyncio.run, args=(compact(redis_target, prefix),))
            worker.start()
            worker.join()

    with pytest.raises(EventLogError, match="changed under the export"):
        await export(client, prefix, tmp_path / "x.ragbak", on_progress=compact_between)
    assert ran and list(tmp_path.iterdir()) == []
    done = await export(client, prefix, tmp_path / "x.ragbak")
    assert (done.documents, done.tombstones) == (9, 1)


async def test_a_target_that_holds_entries_is_refused_untouched(
    redis_target: RedisTarget, client: RedisClient, prefix: str, other_prefix: str, tmp_path: Path
) -> None:
    await fill(redis_target, prefix)
    await export(client, prefix, tmp_path / "log.ragbak")
    target = Streams(other_prefix)
    raw = sync_client(redis_target)
    try:
        raw.xadd(target.documents, {EVENT_FIELD: b"something"})
    finally:
        raw.close()
    before = rows(redis_target, target.documents)
    with pytest.raises(EventLogError, match="already holds 1 entries"):
        await restore(client, redis_target, other_prefix, tmp_path / "log.ragbak")
    with pytest.raises(EventLogError, match="does not hold the beginning"):
        await restore(client, redis_target, other_prefix, tmp_path / "log.ragbak", resume=True)
    assert rows(redis_target, target.documents) == before
    assert hashes(redis_target, other_prefix) == {}
    assert rows(redis_target, target.feedback) == []


async def test_an_empty_stream_with_the_projectors_group_counts_as_empty(
    redis_target: RedisTarget, client: RedisClient, prefix: str, other_prefix: str, tmp_path: Path
) -> None:
    """A service started on the new prefix before the import has made the stream and its
    group; the group then delivers every imported entry."""
    await fill(redis_target, prefix)
    await export(client, prefix, tmp_path / "log.ragbak")
    target = Streams(other_prefix)
    log = RedisEventLog(redis_target, pool_size=2)
    try:
        await log.ensure_group(target.documents, "indexer", start="0")
        await restore(client, redis_target, other_prefix, tmp_path / "log.ragbak")
        read = await log.read_group(target.documents, "indexer", "c", count=100, block_ms=0)
    finally:
        await log.close()
    assert [e.id.encode() for e in read] == [r[0] for r in rows(redis_target, target.documents)]
    assert len(read) == 9


async def test_an_interrupted_import_resumes_to_the_same_log(
    redis_target: RedisTarget,
    client: RedisClient,
    prefix: str,
    other_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await fill(redis_target, prefix)
    await export(client, prefix, tmp_path / "log.ragbak")
    monkeypatch.setattr(archive, "_LOAD_ENTRIES", 2)  # several pages, to stop between two

    def stop_after_two_pages(progress: ImportProgress) -> None:
        if progress.loaded >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await restore(
            client,
            redis_target,
            other_prefix,
            tmp_path / "log.ragbak",
            on_progress=stop_after_two_pages,
        )
    target = Streams(other_prefix)
    assert len(rows(redis_target, target.documents)) == 4
    done = await restore(client, redis_target, other_prefix, tmp_path / "log.ragbak", resume=True)
    assert (done.present, done.loaded) == (4, 8)
    source = Streams(prefix)
    assert [r[0] for r in rows(redis_target, target.documents)] == [
        r.id.encode()
        for r in BackupReader(tmp_path / "log.ragbak").records()
        if r.stream == "documents"
    ]
    assert last_id(redis_target, target.documents) == last_id(redis_target, source.documents)
    assert hashes(redis_target, other_prefix) == hashes(redis_target, prefix)


async def test_a_writer_appending_during_the_import_stops_it(
    redis_target: RedisTarget,
    client: RedisClient,
    prefix: str,
    other_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await fill(redis_target, prefix)
    await export(client, prefix, tmp_path / "log.ragbak")
    monkeypatch.setattr(archive, "_LOAD_ENTRIES", 2)
    target = Streams(other_prefix)
    raw = sync_client(redis_target)

    def ingest_meanwhile(progress: ImportProgress) -> None:
        if progress.loaded == 2:
            raw.xadd(target.documents, {EVENT_FIELD: b"an ingest"})

    try:
        with pytest.raises(EventLogError, match="written to by something else"):
            await restore(
                client,
                redis_target,
                other_prefix,
                tmp_path / "log.ragbak",
                on_progress=ingest_meanwhile,
            )
    finally:
        raw.close()
    # Nothing of the import landed after the foreign entry.
    assert rows(redis_target, target.documents)[-1][1] == {EVENT_FIELD: b"an ingest"}
    assert len(rows(redis_target, target.documents)) == 3


async def test_an_empty_log_round_trips(
    redis_target: RedisTarget, client: RedisClient, prefix: str, other_prefix: str, tmp_path: Path
) -> None:
    done = await export(client, prefix, tmp_path / "empty.ragbak")
    assert (done.documents, done.feedback, done.read) == (0, 0, 0)
    loaded = await restore(client, redis_target, other_prefix, tmp_path / "empty.ragbak")
    assert loaded.loaded == 0
    assert rows(redis_target, Streams(other_prefix).documents) == []
