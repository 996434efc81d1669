"""The Redis Streams event log against a real server: round trips, groups, poison, paging."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import pytest

from app.adapters.redis.embedded import EmbeddedRedis
from app.adapters.redis.streams import EVENT_FIELD, RedisEventLog
from app.domain.events import (
    DocumentDeleted,
    DocumentUpserted,
    EventDeadLettered,
    FeedbackGiven,
    RecordedResult,
    RetrievalRecorded,
    Streams,
    encode_event,
)
from app.errors import DependencyUnavailable, EventLogError, NotFound

if TYPE_CHECKING:
    from tests.integration.redis_fixtures import RoundTrips

from app.adapters.redis.client import RedisTarget
from tests.integration.redis_fixtures import ALL_BACKENDS, RawRedis, delivery_counts

pytest_plugins = ("tests.integration.redis_fixtures",)
pytestmark = pytest.mark.anyio
# The event-log contract holds on every topology, a Redis Cluster included.
REDIS_BACKENDS = ALL_BACKENDS

GROUP = "indexer"


def upserted(doc_id: str, text: str = "some text") -> DocumentUpserted:
    return DocumentUpserted(
        tenant="acme",
        doc_id=doc_id,
        version=f"v-{doc_id}",
        title="Title",
        text=text,
        metadata={"year": 2020, "tags": ["a", "b"], "score": 0.5, "ok": True, "none": None},
        chunk_size=128,
        chunk_overlap=16,
        at=1_700_000_000.123456,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )


EVERY_EVENT = [
    upserted("d1", text='ünïcødé, "quotes", newlines\n and \x00 nulls'),
    DocumentDeleted(tenant="acme", doc_id="d1", at=1_700_000_001.5, traceparent=None),
    RetrievalRecorded(
        retrieval_id="r1",
        tenant="acme",
        query="what is insulin",
        query_sha256=None,
        params={"top_k": 5, "mode": "hybrid", "filters": {"year": {"gte": 2010}}},
        results=[
            RecordedResult(
                chunk_id="c1",
                doc_id="d1",
                score=1.0,
                scores={"dense": 0.71, "bm25": 3.25, "fusion": 0.9},
            ),
            RecordedResult(chunk_id="c2", doc_id="d2", score=0.0, scores={}),
        ],
        timings_ms={"embed": 4.2, "retrieve": 10.01},
        trace_id="0af7651916cd43dd",
        at=1.25,
    ),
    RetrievalRecorded(
        retrieval_id="r2",
        tenant="acme",
        query=None,
        query_sha256="ab" * 32,
        params={},
        results=[],
        timings_ms={},
        trace_id=None,
        at=2.5,
    ),
    FeedbackGiven(
        retrieval_id="r1", tenant="acme", doc_id="d1", chunk_id=None, relevance=2, at=3.0
    ),
    FeedbackGiven(
        retrieval_id="r1", tenant="acme", doc_id=None, chunk_id="c2", relevance=0, at=3.5
    ),
    EventDeadLettered(
        source_stream="rag:documents",
        source_id="1-0",
        group=GROUP,
        raw=b"\xff\x00garbage",
        error="not a valid event",
        deliveries=5,
        at=4.0,
    ),
]


async def test_every_event_type_round_trips(event_log: RedisEventLog, prefix: str) -> None:
    stream = Streams(prefix).documents
    ids = [await event_log.append(stream, event) for event in EVERY_EVENT]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    entries = await event_log.range(stream)
    assert [e.id for e in entries] == ids
    assert [e.event for e in entries] == EVERY_EVENT
    assert all(e.error is None for e in entries)
    assert [e.raw for e in entries] == [encode_event(event) for event in EVERY_EVENT]
    assert all(abs(e.timestamp_ms / 1000 - time.time()) < 60 for e in entries)
    one = await event_log.get(stream, ids[2])
    assert one is not None and one.event == EVERY_EVENT[2]


async def test_append_many_keeps_order_in_one_round_trip(
    event_log: RedisEventLog, prefix: str, round_trips: RoundTrips
) -> None:
    stream = Streams(prefix).documents
    # Open the connection before counting: one to the node that holds the stream (on a
    # cluster, PING would go to any node).
    assert await event_log.length(stream) == 0
    events = [upserted(f"d{i}") for i in range(50)]
    before = round_trips.count
    ids = await event_log.append_many(stream, events)
    assert round_trips.count - before == 1
    assert len(set(ids)) == 50
    assert [e.event for e in await event_log.range(stream)] == events
    assert [e.id for e in await event_log.range(stream)] == ids
    assert await event_log.append_many(stream, []) == []


async def test_two_consumers_share_a_group(event_log: RedisEventLog, prefix: str) -> None:
    stream = Streams(prefix).documents
    await event_log.ensure_group(stream, GROUP)
    await event_log.ensure_group(stream, GROUP)  # idempotent
    ids = await event_log.append_many(stream, [upserted(f"d{i}") for i in range(10)])
    first = await event_log.read_group(stream, GROUP, "a", count=4, block_ms=0)
    second = await event_log.read_group(stream, GROUP, "b", count=100, block_ms=100)
    assert [e.id for e in first] == ids[:4]
    assert [e.id for e in second] == ids[4:]
    assert await event_log.read_group(stream, GROUP, "a", count=10, block_ms=0) == []
    info = await event_log.group_info(stream, GROUP)
    assert info is not None
    assert (info.consumers, info.pending, info.lag, info.last_delivered) == (2, 10, 0, ids[-1])


async def test_a_group_made_at_the_end_sees_only_new_entries(
    event_log: RedisEventLog, prefix: str
) -> None:
    stream = Streams(prefix).retrievals
    await event_log.append(stream, upserted("old"))
    await event_log.ensure_group(stream, "tail", start="$")
    await event_log.ensure_group(stream, "all")
    new_id = await event_log.append(stream, upserted("new"))
    tail = await event_log.read_group(stream, "tail", "c", count=10, block_ms=0)
    everything = await event_log.read_group(stream, "all", "c", count=10, block_ms=0)
    assert [e.id for e in tail] == [new_id]
    assert len(everything) == 2


async def test_ensure_group_creates_the_stream(event_log: RedisEventLog, prefix: str) -> None:
    stream = Streams(prefix).documents
    assert await event_log.group_info(stream, GROUP) is None
    await event_log.ensure_group(stream, GROUP)
    assert await event_log.length(stream) == 0
    info = await event_log.group_info(stream, GROUP)
    assert info is not None and (info.pending, info.lag) == (0, 0)
    assert await event_log.group_info(stream, "other") is None


async def test_pending_entries_come_back_to_a_restarted_consumer(
    redis_target: RedisTarget, event_log: RedisEventLog, prefix: str
) -> None:
    stream = Streams(prefix).documents
    await event_log.ensure_group(stream, GROUP)
    ids = await event_log.append_many(stream, [upserted(f"d{i}") for i in range(5)])
    got = await event_log.read_group(stream, GROUP, "worker-1", count=3, block_ms=0)
    assert [e.id for e in got] == ids[:3]
    # The consumer "dies" without acknowledging; a new process with the same name restarts.
    restarted = RedisEventLog(redis_target, pool_size=2)
    try:
        again = await restarted.read_pending(stream, GROUP, "worker-1", count=10)
        assert [e.id for e in again] == ids[:3]
        assert [e.event for e in again] == [e.event for e in got]
        assert await delivery_counts(redis_target, stream, GROUP, ids) == dict.fromkeys(ids[:3], 2)
        # Paging through the pending list with `after`.
        assert [
            e.id
            for e in await restarted.read_pending(stream, GROUP, "worker-1", count=10, after=ids[0])
        ] == ids[1:3]
        assert await restarted.read_pending(stream, GROUP, "someone-else", count=10) == []
        assert await restarted.ack(stream, GROUP, ids[:3]) == 3
        assert await restarted.read_pending(stream, GROUP, "worker-1", count=10) == []
        # The two never delivered are still there for the group.
        rest = await restarted.read_group(stream, GROUP, "worker-1", count=10, block_ms=0)
        assert [e.id for e in rest] == ids[3:]
    finally:
        await restarted.close()


async def test_idle_entries_are_claimed_by_another_consumer(
    redis_target: RedisTarget, event_log: RedisEventLog, prefix: str
) -> None:
    stream = Streams(prefix).documents
    await event_log.ensure_group(stream, GROUP)
    ids = await event_log.append_many(stream, [upserted(f"d{i}") for i in range(3)])
    await event_log.read_group(stream, GROUP, "dead", count=10, block_ms=0)
    # Not idle long enough yet: nothing moves.
    assert await event_log.claim_idle(stream, GROUP, "alive", min_idle_ms=60_000, count=10) == []
    await asyncio.sleep(0.15)
    claimed = await event_log.claim_idle(stream, GROUP, "alive", min_idle_ms=100, count=10)
    assert [e.id for e in claimed] == ids
    assert all(e.event is not None for e in claimed)
    assert await delivery_counts(redis_target, stream, GROUP, ids) == dict.fromkeys(ids, 2)
    assert [e.id for e in await event_log.read_pending(stream, GROUP, "alive", count=10)] == ids
    assert await event_log.read_pending(stream, GROUP, "dead", count=10) == []


async def test_claim_idle_takes_at_most_count_and_pages_on(
    event_log: RedisEventLog, prefix: str
) -> None:
    stream = Streams(prefix).documents
    await event_log.ensure_group(stream, GROUP)
    ids = await event_log.append_many(stream, [upserted(f"d{i}") for i in range(12)])
    await event_log.read_group(stream, GROUP, "dead", count=100, block_ms=0)
    await asyncio.sleep(0.15)
    # A claim resets an entry's idle time, so each call moves on to entries not yet taken.
    batches = [
        await event_log.claim_idle(stream, GROUP, "alive", min_idle_ms=100, count=5)
        for _ in range(4)
    ]
    assert [len(b) for b in batches] == [5, 5, 2, 0]
    assert [e.id for b in batches for e in b] == ids


async def test_reads_of_pending_entries_and_claims_are_deliveries_and_ack_clears_them(
    redis_target: RedisTarget, event_log: RedisEventLog, prefix: str
) -> None:
    stream = Streams(prefix).documents
    await event_log.ensure_group(stream, GROUP)
    [entry_id] = await event_log.append_many(stream, [upserted("d")])
    await event_log.read_group(stream, GROUP, "a", count=1, block_ms=0)
    assert await delivery_counts(redis_target, stream, GROUP, [entry_id]) == {entry_id: 1}
    await event_log.read_pending(stream, GROUP, "a", count=1)
    assert await delivery_counts(redis_target, stream, GROUP, [entry_id]) == {entry_id: 2}
    await event_log.claim_idle(stream, GROUP, "b", min_idle_ms=0, count=1)
    assert await delivery_counts(redis_target, stream, GROUP, [entry_id]) == {entry_id: 3}
    assert await event_log.ack(stream, GROUP, [entry_id]) == 1
    assert await event_log.ack(stream, GROUP, [entry_id]) == 0
    assert await delivery_counts(redis_target, stream, GROUP, [entry_id]) == {}
    assert await event_log.ack(stream, GROUP, []) == 0
    info = await event_log.group_info(stream, GROUP)
    assert info is not None and info.pending == 0


async def test_poison_entries_arrive_with_the_error_and_their_bytes(
    event_log: RedisEventLog, raw_redis: RawRedis, prefix: str
) -> None:
    stream = Streams(prefix).documents
    await event_log.ensure_group(stream, GROUP)
    good_1 = await event_log.append(stream, upserted("before"))
    garbage = b"\xff\x00 not json"
    await raw_redis.xadd(stream, {EVENT_FIELD: garbage})
    await raw_redis.xadd(stream, {EVENT_FIELD: b'{"type":"DocumentExploded","schema":1}'})
    newer = encode_event(upserted("future")).replace(b'"schema":1', b'"schema":9')
    await raw_redis.xadd(stream, {EVENT_FIELD: newer})
    await raw_redis.xadd(stream, {b"payload": b"\x01\x02", b"kind": b"x"})
    good_2 = await event_log.append(stream, upserted("after"))

    entries = await event_log.read_group(stream, GROUP, "c", count=10, block_ms=0)
    assert len(entries) == 6
    assert (entries[0].id, entries[-1].id) == (good_1, good_2)
    assert entries[0].event == upserted("before") and entries[-1].event == upserted("after")
    poison = entries[1:5]
    assert all(e.event is None and e.error for e in poison)
    assert [e.raw for e in poison[:3]] == [
        garbage,
        b'{"type":"DocumentExploded","schema":1}',
        newer,
    ]
    assert "schema 9" in (poison[2].error or "")
    # No `event` field at all: every field and value survives, msgpack-encoded.
    assert "no 'event' field" in (poison[3].error or "")
    assert sorted(msgspec.msgpack.decode(poison[3].raw)) == [
        [b"kind", b"x"],
        [b"payload", b"\x01\x02"],
    ]
    # Poison is still delivered and acknowledged like anything else.
    assert await event_log.ack(stream, GROUP, [e.id for e in poison]) == 4


async def test_a_pending_entry_deleted_from_the_stream_still_comes_back(
    event_log: RedisEventLog, raw_redis: RawRedis, prefix: str
) -> None:
    stream = Streams(prefix).documents
    await event_log.ensure_group(stream, GROUP)
    entry_id = await event_log.append(stream, upserted("gone"))
    await event_log.read_group(stream, GROUP, "c", count=1, block_ms=0)
    await raw_redis.xdel(stream, entry_id)
    [entry] = await event_log.read_pending(stream, GROUP, "c", count=10)
    assert (entry.id, entry.event, entry.raw) == (entry_id, None, b"")
    assert entry.error
    assert await event_log.ack(stream, GROUP, [entry.id]) == 1


async def test_range_pages_through_a_stream(event_log: RedisEventLog, prefix: str) -> None:
    stream = Streams(prefix).documents
    ids = await event_log.append_many(stream, [upserted(f"d{i}") for i in range(25)])
    pages, start = [], "-"
    while page := await event_log.range(stream, start=start, count=10):
        pages.append(page)
        start = f"({page[-1].id}"
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [e.id for p in pages for e in p] == ids
    assert [e.id for e in await event_log.range(stream, start=ids[3], end=ids[5])] == ids[3:6]
    assert await event_log.range(Streams(prefix).feedback) == []


async def test_get_and_length(event_log: RedisEventLog, prefix: str) -> None:
    stream = Streams(prefix).retrievals
    assert await event_log.length(stream) == 0
    entry_id = await event_log.append(stream, EVERY_EVENT[2])
    assert await event_log.length(stream) == 1
    found = await event_log.get(stream, entry_id)
    assert found is not None and found.event == EVERY_EVENT[2]
    assert await event_log.get(stream, "1-0") is None
    assert await event_log.get(stream, "not-an-id") is None
    assert await event_log.get(stream, "") is None


async def test_trim_older_than_removes_only_old_entries(
    event_log: RedisEventLog, raw_redis: RawRedis, prefix: str
) -> None:
    stream = Streams(prefix).retrievals
    now_s, now_us = await raw_redis.time()
    now_ms = now_s * 1000 + now_us // 1000
    data = {EVENT_FIELD: encode_event(EVERY_EVENT[2])}
    for age_ms in (3_600_000, 120_000, 61_000):
        await raw_redis.xadd(stream, data, id=f"{now_ms - age_ms}-0")
    await raw_redis.xadd(stream, data, id=f"{now_ms - 30_000}-0")
    recent = await event_log.append(stream, EVERY_EVENT[2])
    assert await event_log.trim_older_than(stream, 60) == 3
    assert [e.id for e in await event_log.range(stream)] == [f"{now_ms - 30_000}-0", recent]
    assert await event_log.trim_older_than(stream, 60) == 0
    assert await event_log.trim_older_than(Streams(prefix).feedback, 60) == 0


async def test_a_blocking_read_outlasts_the_socket_timeout_and_frees_the_pool(
    redis_target: RedisTarget, prefix: str
) -> None:
    stream = Streams(prefix).documents
    # A pool of one with a 0.3 s socket timeout: a blocking read on it would both time out
    # and keep the append below waiting.
    log = RedisEventLog(redis_target, pool_size=1, socket_timeout=0.3)
    try:
        await log.ensure_group(stream, GROUP)
        started = time.monotonic()
        assert await log.read_group(stream, GROUP, "c", count=1, block_ms=800) == []
        assert time.monotonic() - started >= 0.7

        reader = asyncio.create_task(log.read_group(stream, GROUP, "c", count=1, block_ms=3000))
        await asyncio.sleep(0.1)
        appended_at = time.monotonic()
        entry_id = await log.append(stream, upserted("wake"))
        assert time.monotonic() - appended_at < 0.25
        [entry] = await asyncio.wait_for(reader, timeout=2)
        assert entry.id == entry_id
        assert time.monotonic() - appended_at < 1.0
    finally:
        await log.close()


async def test_a_cancelled_blocking_read_leaves_the_log_usable(
    event_log: RedisEventLog, prefix: str
) -> None:
    stream = Streams(prefix).documents
    await event_log.ensure_group(stream, GROUP)
    # The consumer's reader is made (and, on a cluster, has found the nodes) by a first
    # blocking read that an entry answers at once, so the read below is sent at once and
    # the cancel lands while it waits on the server. (Cancelled as its command is written,
    # a read could run its whole BLOCK: on Python 3.11 redis-py's asyncio.wait_for can lose
    # a cancel, CPython gh-86296.)
    first = await event_log.append(stream, upserted("first"))
    [entry] = await event_log.read_group(stream, GROUP, "c", count=1, block_ms=5000)
    assert entry.id == first and await event_log.ack(stream, GROUP, [first]) == 1
    reader = asyncio.create_task(event_log.read_group(stream, GROUP, "c", count=1, block_ms=5000))
    await asyncio.sleep(0.1)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    # Had the connection been kept, the next read would queue behind the abandoned one on
    # the server and take its reply after five seconds.
    started = time.monotonic()
    assert await event_log.read_group(stream, GROUP, "c", count=1, block_ms=200) == []
    assert time.monotonic() - started < 1.5
    entry_id = await event_log.append(stream, upserted("after-cancel"))
    [entry] = await event_log.read_group(stream, GROUP, "c", count=1, block_ms=1000)
    assert entry.id == entry_id and entry.event == upserted("after-cancel")


async def test_an_unreachable_server_is_reported_quickly(closed_port_url: str) -> None:
    log = RedisEventLog(closed_port_url, pool_size=2, connect_timeout=0.5)
    stream = Streams("test:unreachable:").documents
    calls = [
        lambda: log.append(stream, upserted("x")),
        lambda: log.append_many(stream, [upserted("x")]),
        lambda: log.ensure_group(stream, GROUP),
        lambda: log.read_group(stream, GROUP, "c", count=1, block_ms=1000),
        lambda: log.read_group(stream, GROUP, "c", count=1, block_ms=0),
        lambda: log.range(stream),
        lambda: log.length(stream),
    ]
    try:
        for call in calls:
            started = time.monotonic()
            with pytest.raises(DependencyUnavailable) as err:
                await call()
            assert time.monotonic() - started < 1.0
            assert err.value.retry_after > 0
        assert await log.ping() is False
    finally:
        await log.close()


async def test_server_refusals_are_translated(
    event_log: RedisEventLog, raw_redis: RawRedis, prefix: str
) -> None:
    stream = Streams(prefix).documents
    await event_log.append(stream, upserted("d"))
    with pytest.raises(NotFound):
        await event_log.read_group(stream, "no-such-group", "c", count=1, block_ms=0)
    await raw_redis.set(f"{prefix}string", "x")
    with pytest.raises(EventLogError):
        await event_log.append(f"{prefix}string", upserted("d"))
    assert await event_log.ping() is True


async def test_the_log_recovers_when_its_server_comes_back(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    log = RedisEventLog(server.start(), pool_size=2, connect_timeout=0.5)
    stream = Streams("test:restart:").documents
    try:
        await log.ensure_group(stream, GROUP)
        before = await log.append(stream, upserted("before"))
        server.stop()
        with pytest.raises(DependencyUnavailable):
            await log.append(stream, upserted("while down"))
        with pytest.raises(DependencyUnavailable):
            await log.read_group(stream, GROUP, "c", count=10, block_ms=100)
        assert await log.ping() is False
        await asyncio.to_thread(server.start)  # same URL; the stream is back from the AOF
        after = await log.append(stream, upserted("after"))
        entries = await log.read_group(stream, GROUP, "c", count=10, block_ms=100)
        assert [e.id for e in entries] == [before, after]
    finally:
        await log.close()
        server.stop()


@pytest.mark.anyio
async def test_a_burst_larger_than_the_pool_waits_instead_of_failing(
    redis_target: RedisTarget, prefix: str
) -> None:
    # On a cluster, redis-py's node pools raise at max_connections instead of waiting.
    log = RedisEventLog(redis_target, pool_size=4)
    try:
        stream = f"{prefix}documents"
        ids = await asyncio.gather(*(log.append(stream, upserted(f"d{i}")) for i in range(200)))
        assert len(set(ids)) == 200
        assert await log.length(stream) == 200
    finally:
        await log.close()
