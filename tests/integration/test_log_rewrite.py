"""Rewriting a stream in place on a real server: ids, groups, pending entries and appends kept."""

from __future__ import annotations

import asyncio

import pytest

from app.adapters.redis.client import RedisTarget
from app.adapters.redis.rewrite import RedisLogRewriter
from app.adapters.redis.streams import RedisEventLog
from app.domain.events import DocumentDeleted, DocumentUpserted, Entry, Streams, encode_event
from app.errors import InvalidRequest
from app.ports import Decision
from tests.integration.redis_fixtures import ALL_BACKENDS, RawRedis

pytest_plugins = ("tests.integration.redis_fixtures",)
pytestmark = pytest.mark.anyio
REDIS_BACKENDS = ALL_BACKENDS

GROUP = "indexer"


def upserted(doc_id: str, text: str) -> DocumentUpserted:
    return DocumentUpserted(
        tenant="acme",
        doc_id=doc_id,
        version=f"v-{text}",
        title="T",
        text=text,
        metadata={},
        chunk_size=128,
        chunk_overlap=16,
        at=0.0,
        traceparent=None,
    )


def drop_odd_texts(entry: Entry) -> Decision:
    assert isinstance(entry.event, DocumentUpserted)
    return "drop" if int(entry.event.text.split()[-1]) % 2 else "keep"


@pytest.fixture()
async def rewriter(redis_target: RedisTarget) -> RedisLogRewriter:
    rewriter = RedisLogRewriter(redis_target, page=7)  # several pages even for a small stream
    yield rewriter  # type: ignore[misc]
    await rewriter.close()


async def test_kept_entries_keep_their_ids_groups_and_pending_entries(
    event_log: RedisEventLog, rewriter: RedisLogRewriter, raw_redis: RawRedis, prefix: str
) -> None:
    stream = Streams(prefix).documents
    ids = [await event_log.append(stream, upserted(f"d{i}", f"text {i}")) for i in range(30)]
    await event_log.ensure_group(stream, GROUP)
    # Consumer a reads 10 and acknowledges 4; consumer b reads 5 and leaves them pending.
    first = await event_log.read_group(stream, GROUP, "a", count=10, block_ms=0)
    await event_log.ack(stream, GROUP, [e.id for e in first[:4]])
    second = await event_log.read_group(stream, GROUP, "b", count=5, block_ms=0)
    await asyncio.sleep(0.05)
    before = {row["consumer"]: row for row in await _pending(raw_redis, stream)}
    last_before = (await raw_redis.xinfo_stream(stream))["last-generated-id"]

    report = await rewriter.rewrite(stream, drop_odd_texts, upto=ids[-1])

    assert (report.read, report.kept, report.dropped) == (30, 15, 15)
    kept = await event_log.range(stream)
    assert [e.id for e in kept] == [ids[i] for i in range(0, 30, 2)]
    info = await raw_redis.xinfo_stream(stream)
    # New ids still sort after every old one.
    assert _text(info["last-generated-id"]) == _text(last_before)
    group = await event_log.group_info(stream, GROUP)
    assert group is not None and group.last_delivered == second[-1].id
    pending = await _pending(raw_redis, stream)
    expected = [e.id for e in first[4:] + second if int(e.event.text.split()[-1]) % 2 == 0]  # type: ignore[union-attr]
    assert sorted(_text(row["message_id"]) for row in pending) == sorted(expected)
    for row in pending:
        assert row["times_delivered"] == 1
        # The idle time carried over: not reset to 0 by the recreation.
        assert row["time_since_delivered"] >= before[row["consumer"]]["time_since_delivered"]
    assert report.pending_carried == len(expected)
    assert report.pending_dropped == 11 - len(expected)
    # The group goes on where it was: the next read delivers the first entry never delivered.
    nxt = await event_log.read_group(stream, GROUP, "a", count=1, block_ms=0)
    assert [e.id for e in nxt] == [ids[16]]
    appended = await event_log.append(stream, upserted("new", "text 100"))
    assert [e.id for e in await event_log.range(stream, start=f"({ids[-1]}")] == [appended]


async def test_entries_appended_during_the_rewrite_are_kept(
    event_log: RedisEventLog, rewriter: RedisLogRewriter, prefix: str
) -> None:
    stream = Streams(prefix).documents
    ids = [await event_log.append(stream, upserted(f"d{i}", f"text {i}")) for i in range(40)]
    appended: list[str] = []
    done = asyncio.Event()

    async def keep_appending() -> None:
        n = 1000
        while not done.is_set():
            appended.append(await event_log.append(stream, upserted(f"x{n}", f"text {n}")))
            n += 1
            await asyncio.sleep(0)

    writer = asyncio.create_task(keep_appending())

    def slow_choice(entry: Entry) -> Decision:
        return drop_odd_texts(entry)

    report = await rewriter.rewrite(stream, slow_choice, upto=ids[-1])
    done.set()
    await writer
    stored = [e.id for e in await event_log.range(stream, count=100_000)]
    assert stored == [ids[i] for i in range(0, 40, 2)] + appended
    assert report.dropped == 20


async def test_replacing_an_entry_and_dropping_everything(
    event_log: RedisEventLog, rewriter: RedisLogRewriter, raw_redis: RawRedis, prefix: str
) -> None:
    stream = Streams(prefix).documents
    a = await event_log.append(stream, upserted("a", "text 1"))
    b = await event_log.append(stream, upserted("b", "text 2"))
    await event_log.ensure_group(stream, GROUP, start="0")
    replacement = encode_event(DocumentDeleted(tenant="acme", doc_id="a", at=1.0, traceparent=None))

    await rewriter.rewrite(stream, lambda e: replacement if e.id == a else "keep", upto=b)
    got = await event_log.range(stream)
    assert [e.id for e in got] == [a, b]
    assert isinstance(got[0].event, DocumentDeleted)

    await rewriter.rewrite(stream, lambda e: "drop", upto=b)
    assert await event_log.length(stream) == 0
    assert await event_log.group_info(stream, GROUP) is not None  # the group survives
    assert _text((await raw_redis.xinfo_stream(stream))["last-generated-id"]) == b
    # An append after everything was dropped still gets an id above every old one.
    c = await event_log.append(stream, upserted("c", "text 3"))
    assert [e.id for e in await event_log.read_group(stream, GROUP, "a", count=5, block_ms=0)] == [
        c
    ]


async def test_a_second_rewrite_of_the_same_stream_is_refused_meanwhile(
    event_log: RedisEventLog, rewriter: RedisLogRewriter, raw_redis: RawRedis, prefix: str
) -> None:
    stream = Streams(prefix).documents
    last = await event_log.append(stream, upserted("a", "text 1"))
    await raw_redis.set(f"{stream}:rewrite-lock", "someone-else", px=5000)
    with pytest.raises(InvalidRequest) as refused:
        await rewriter.rewrite(stream, lambda e: "drop", upto=last)
    assert refused.value.status == 409
    assert await event_log.length(stream) == 1


async def test_settled_below_is_the_lowest_id_a_group_still_needs(
    event_log: RedisEventLog, rewriter: RedisLogRewriter, prefix: str
) -> None:
    stream = Streams(prefix).documents
    ids = [await event_log.append(stream, upserted(f"d{i}", f"text {i}")) for i in range(6)]
    assert await rewriter.settled_below(stream) == "0-0"  # no group: nothing is settled
    await event_log.ensure_group(stream, GROUP)
    read = await event_log.read_group(stream, GROUP, "a", count=4, block_ms=0)
    await event_log.ack(stream, GROUP, [read[0].id, read[2].id])
    assert await rewriter.settled_below(stream) == ids[1]  # ids[1] is still pending
    await event_log.ack(stream, GROUP, [read[1].id, read[3].id])
    ms, seq = ids[3].split("-")
    assert await rewriter.settled_below(stream) == f"{ms}-{int(seq) + 1}"


async def _pending(raw_redis: RawRedis, stream: str) -> list[dict]:  # type: ignore[type-arg]
    return list(await raw_redis.xpending_range(stream, GROUP, min="-", max="+", count=1000))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
