"""A SciFact-sized log round trip: the 5,183 SciFact documents appended straight to the document
stream (no embedding), some in several versions, some deleted, some deleted and back, with the
written records the write side keeps; exported and imported into a fresh prefix, byte for byte.
Rates print with `-s`. `bench/backup.py` measures the same log with medians."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.adapters.backup_file import BackupReader, BackupWriter
from app.adapters.redis.archive import export_log, import_log
from app.adapters.redis.client import RedisClient, RedisTarget, close_client, durable_client
from app.adapters.redis.doc_status import RedisDocStatus
from app.adapters.redis.streams import EVENT_FIELD, RedisEventLog
from app.cli.corpus import read_beir_corpus
from app.domain.doc_status import Written
from app.domain.document_log import written_record
from app.domain.events import DocumentDeleted, DocumentUpserted, Streams, encode_event
from app.domain.records import ChunkingParams, DocumentIn
from app.services.indexing import document_version
from tests.integration.redis_fixtures import BACKENDS, delete_prefixed, sync_client

pytest_plugins = ("tests.integration.redis_fixtures",)
pytestmark = [pytest.mark.anyio, pytest.mark.slow]
# One server is enough to measure on: tests/integration/test_archive.py covers the topologies.
REDIS_BACKENDS = BACKENDS[:1]

TENANT = "scifact"
CHUNKING = ChunkingParams(size=256, overlap=32)
_APPEND_BATCH = 500


def scifact_events(corpus: Path) -> list[DocumentUpserted | DocumentDeleted]:
    """Every SciFact document once; every 4th again with a revision, every 16th a third time;
    every 40th deleted; every 200th deleted and then ingested again."""
    docs = [
        DocumentIn(id=d.id, title=d.title, text=d.text, metadata=dict(d.metadata))
        for d in read_beir_corpus(corpus / "corpus.jsonl")
    ]

    def upserted(doc: DocumentIn, at: float) -> DocumentUpserted:
        return DocumentUpserted(
            tenant=TENANT,
            doc_id=doc.id,
            version=document_version(doc, CHUNKING),
            title=doc.title,
            text=doc.text,
            metadata=doc.metadata,
            chunk_size=CHUNKING.size,
            chunk_overlap=CHUNKING.overlap,
            at=at,
            traceparent=None,
        )

    def revised(doc: DocumentIn, n: int) -> DocumentIn:
        return DocumentIn(id=doc.id, title=doc.title, text=f"{doc.text} (revision {n})")

    events: list[DocumentUpserted | DocumentDeleted] = [upserted(d, 1.0) for d in docs]
    events += [upserted(revised(d, 1), 2.0) for i, d in enumerate(docs) if i % 4 == 0]
    events += [upserted(revised(d, 2), 3.0) for i, d in enumerate(docs) if i % 16 == 0]
    gone = [d for i, d in enumerate(docs) if i % 40 == 0]
    events += [DocumentDeleted(tenant=TENANT, doc_id=d.id, at=4.0, traceparent=None) for d in gone]
    events += [upserted(revised(d, 3), 5.0) for i, d in enumerate(docs) if i % 200 == 0]
    return events


async def append_log(
    target: RedisTarget, prefix: str, events: list[DocumentUpserted | DocumentDeleted]
) -> list[str]:
    """Append `events` as the write side does (the stream, then the written records); their ids."""
    streams = Streams(prefix=prefix)
    log = RedisEventLog(target, pool_size=2)
    status = RedisDocStatus(target, prefix=prefix, pool_size=2)
    ids: list[str] = []
    try:
        for start in range(0, len(events), _APPEND_BATCH):
            batch = events[start : start + _APPEND_BATCH]
            appended = await log.append_many(streams.documents, batch)
            records: dict[str, Written] = {}
            for entry_id, event in zip(appended, batch, strict=True):
                records[event.doc_id] = written_record(entry_id, event)
            await status.record_written(TENANT, records)
            ids += appended
    finally:
        await status.close()
        await log.close()
    return ids


@pytest.fixture()
def other_prefix(redis_target: RedisTarget) -> Iterator[str]:
    value = f"test:{{scifact-restored-{time.time_ns()}}}:"
    yield value
    delete_prefixed(redis_target, value)


@pytest.fixture()
async def client(redis_target: RedisTarget) -> AsyncIterator[RedisClient]:
    made = durable_client(redis_target, pool_size=2, socket_timeout=30.0, connect_timeout=5.0)
    yield made
    await close_client(made)


async def test_a_scifact_sized_log_round_trips_byte_for_byte(
    scifact: Path,
    redis_target: RedisTarget,
    client: RedisClient,
    prefix: str,
    other_prefix: str,
    tmp_path: Path,
) -> None:
    events = scifact_events(scifact)
    ids = await append_log(redis_target, prefix, events)
    newest: dict[str, tuple[str, bytes]] = {}
    for entry_id, event in zip(ids, events, strict=True):
        newest[event.doc_id] = (entry_id, encode_event(event))
    assert len(newest) == 5183 and len(events) > 6500

    path = tmp_path / "scifact.ragbak"
    started = time.perf_counter()
    with BackupWriter(str(path)) as writer:
        exported = await export_log(
            client, Streams(prefix), writer, feedback=True, build="test", created_at=time.time()
        )
    export_s = time.perf_counter() - started
    started = time.perf_counter()
    loaded = await import_log(client, redis_target, Streams(other_prefix), BackupReader(path))
    import_s = time.perf_counter() - started

    assert (exported.documents, exported.tombstones) == (5183, 5183 // 40 + 1 - 5183 // 200 - 1)
    assert loaded.loaded == 5183 and loaded.tombstones == exported.tombstones
    want = sorted(
        ((entry_id.encode(), {EVENT_FIELD: raw}) for entry_id, raw in newest.values()),
        key=lambda row: tuple(map(int, row[0].split(b"-"))),
    )
    raw = sync_client(redis_target)
    try:
        assert raw.xrange(Streams(other_prefix).documents) == want
        assert raw.hgetall(f"{other_prefix}docs:{TENANT}") == raw.hgetall(f"{prefix}docs:{TENANT}")
        assert (
            raw.xinfo_stream(Streams(other_prefix).documents)["last-generated-id"]
            == ids[-1].encode()
        )
    finally:
        raw.close()
    size, raw_mb = path.stat().st_size / 1e6, writer.raw_bytes / 1e6
    print(
        f"\nSciFact log: {len(events)} entries, {exported.documents} exported in {export_s:.2f} s "
        f"({len(events) * 2 / export_s:,.0f} entries read/s, {raw_mb / export_s:.1f} MB/s); "
        f"file {size:.2f} MB of {raw_mb:.2f} MB; imported in {import_s:.2f} s "
        f"({loaded.loaded / import_s:,.0f} entries/s, checks included)"
    )
