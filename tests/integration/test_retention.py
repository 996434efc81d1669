"""Retention and stream sizes against a real Redis: exact trims by age and length, dead
letters told before they go, one trimmer a period, and stream memory sampled rarely."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from redis.asyncio.cluster import RedisCluster

from app.adapters.redis.client import RedisTarget
from app.adapters.redis.lease import RedisLease
from app.adapters.redis.streams import EVENT_FIELD, RedisEventLog
from app.domain.events import (
    DocumentUpserted,
    EventDeadLettered,
    FeedbackGiven,
    Streams,
    encode_event,
)
from app.services.retention import Bound, Retention, successor
from app.services.stream_usage import StreamUsage
from tests.integration.redis_fixtures import ALL_BACKENDS, RawRedis

pytest_plugins = ("tests.integration.redis_fixtures",)
pytestmark = pytest.mark.anyio
# The new EventLog methods hold on every topology: INFO goes through a script to be routed.
REDIS_BACKENDS = ALL_BACKENDS

DAY_MS = 86_400_000


def feedback(n: int) -> FeedbackGiven:
    return FeedbackGiven(
        retrieval_id=f"r{n}", tenant="acme", doc_id=f"d{n}", chunk_id=None, relevance=1, at=1.0
    )


def dead_letter(streams: Streams, doc_id: str, tenant: str = "acme") -> EventDeadLettered:
    source = DocumentUpserted(
        tenant=tenant,
        doc_id=doc_id,
        version="v1",
        title="t",
        text=f"text of {doc_id}",
        metadata={},
        chunk_size=128,
        chunk_overlap=16,
        at=1.0,
        traceparent=None,
    )
    return EventDeadLettered(
        source_stream=streams.documents,
        source_id="1-1",
        group="indexer",
        raw=encode_event(source),
        error=f"{doc_id} would not embed",
        deliveries=5,
        at=1.0,
    )


async def now_ms(raw: RawRedis) -> int:
    seconds, micros = await raw.time()
    return int(seconds) * 1000 + int(micros) // 1000


def trimmed_total(stream: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "rag_stream_trimmed_total", {"stream": stream, "reason": reason}
    )
    return value or 0.0


# --- the EventLog methods --------------------------------------------------------------------


async def test_trim_to_length_is_exact_and_keeps_the_newest(
    event_log: RedisEventLog, prefix: str
) -> None:
    stream = Streams(prefix).feedback
    # 250 entries span three listpack nodes (100 a node by default): an approximate trim
    # (MAXLEN ~) would keep whole nodes and leave 200 or 300.
    ids = await event_log.append_many(stream, [feedback(n) for n in range(250)])
    assert await event_log.trim_to_length(stream, 137) == 113
    kept = await event_log.range(stream, count=1000)
    assert [e.id for e in kept] == ids[113:]
    assert await event_log.trim_to_length(stream, 137) == 0
    assert await event_log.trim_to_length(Streams(prefix).dead_letter, 10) == 0  # no stream


async def test_trim_before_removes_exactly_the_lower_ids(
    event_log: RedisEventLog, prefix: str
) -> None:
    stream = Streams(prefix).feedback
    ids = await event_log.append_many(stream, [feedback(n) for n in range(10)])
    assert await event_log.trim_before(stream, successor(ids[3])) == 4
    assert [e.id for e in await event_log.range(stream)] == ids[4:]
    assert successor("5-9") == "5-10"


async def test_clock_ms_is_the_servers(event_log: RedisEventLog, raw_redis: RawRedis) -> None:
    ours = await event_log.clock_ms()
    theirs = await now_ms(raw_redis)
    assert 0 <= theirs - ours < 5_000


async def test_memory_usage_counts_the_whole_stream(
    event_log: RedisEventLog, raw_redis: RawRedis, prefix: str
) -> None:
    stream = Streams(prefix).feedback
    assert await event_log.memory_usage(stream) == 0
    await event_log.append_many(stream, [feedback(n) for n in range(10)])
    small = await event_log.memory_usage(stream)
    await event_log.append_many(stream, [feedback(n) for n in range(2000)])
    large = await event_log.memory_usage(stream)
    assert small > 0 and large > small * 10
    # What the server itself says, every node counted.
    assert large == await raw_redis.memory_usage(stream, samples=0)


async def test_memory_is_that_of_the_server_holding_the_stream(
    event_log: RedisEventLog, raw_redis: RawRedis, prefix: str
) -> None:
    stream = Streams(prefix).documents
    memory = await event_log.memory(stream)
    if isinstance(raw_redis, RedisCluster):
        await raw_redis.initialize()
        info = await raw_redis.info("memory", target_nodes=raw_redis.get_node_from_key(stream))
    else:
        info = await raw_redis.info("memory")
    assert memory.max_bytes == int(info["maxmemory"])
    assert memory.policy == str(info["maxmemory_policy"])
    # used_memory moves between the two reads; the same server is within a few MB of itself.
    assert abs(memory.used_bytes - int(info["used_memory"])) < 8 * 1024 * 1024
    assert memory.used_bytes > 0


# --- retention -------------------------------------------------------------------------------


def retention(
    event_log: RedisEventLog,
    lease: RedisLease,
    streams: Streams,
    *,
    feedback_age_s: int = 86_400,
    feedback_max: int = 0,
    dead_age_s: int = 86_400,
    dead_max: int = 0,
) -> Retention:
    return Retention(
        event_log,
        lease,
        feedback=Bound(
            stream=streams.feedback, max_age_seconds=feedback_age_s, max_entries=feedback_max
        ),
        dead_letter=Bound(
            stream=streams.dead_letter, max_age_seconds=dead_age_s, max_entries=dead_max
        ),
        holder="test",
    )


@pytest.fixture()
async def lease(redis_target: RedisTarget, prefix: str) -> AsyncIterator[RedisLease]:
    made = RedisLease(redis_target, prefix=prefix)
    yield made
    await made.close()


async def test_feedback_is_trimmed_by_age_then_by_length(
    event_log: RedisEventLog, raw_redis: RawRedis, lease: RedisLease, prefix: str
) -> None:
    streams = Streams(prefix)
    now = await now_ms(raw_redis)
    data = {EVENT_FIELD: encode_event(feedback(0))}
    for days in (40, 35, 2):  # two older than the 30-day bound, one within it
        await raw_redis.xadd(streams.feedback, data, id=f"{now - days * DAY_MS}-0")
    recent = await event_log.append_many(streams.feedback, [feedback(n) for n in range(20)])
    age_before = trimmed_total(streams.feedback, "age")
    length_before = trimmed_total(streams.feedback, "length")

    keeper = retention(event_log, lease, streams, feedback_age_s=30 * 86_400, feedback_max=15)
    trimmed, dead = await keeper.trim()

    assert (trimmed.by_age, trimmed.by_length) == (2, 6)  # 21 left by age, 15 by length
    assert [e.id for e in await event_log.range(streams.feedback)] == recent[5:]
    assert trimmed_total(streams.feedback, "age") - age_before == 2
    assert trimmed_total(streams.feedback, "length") - length_before == 6
    assert (dead.by_age, dead.by_length) == (0, 0)
    again, _ = await keeper.trim()
    assert (again.by_age, again.by_length) == (0, 0)


async def test_dead_letters_are_told_before_they_are_trimmed(
    event_log: RedisEventLog,
    raw_redis: RawRedis,
    lease: RedisLease,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    streams = Streams(prefix)
    now = await now_ms(raw_redis)
    for days, doc_id in ((45, "ancient"), (31, "old")):
        event = dead_letter(streams, doc_id, tenant="tenant-a")
        await raw_redis.xadd(
            streams.dead_letter, {EVENT_FIELD: encode_event(event)}, id=f"{now - days * DAY_MS}-0"
        )
    fresh = await event_log.append_many(
        streams.dead_letter, [dead_letter(streams, f"fresh-{n}") for n in range(5)]
    )
    keeper = retention(event_log, lease, streams, dead_age_s=30 * 86_400, dead_max=3)
    with caplog.at_level(logging.WARNING, logger="app.services.retention"):
        _, trimmed = await keeper.trim()

    assert (trimmed.by_age, trimmed.by_length) == (2, 2)
    assert [e.id for e in await event_log.range(streams.dead_letter)] == fresh[2:]
    told = [r.getMessage() for r in caplog.records if "dead letter" in r.getMessage()]
    assert len(told) == 4
    assert "tenant-a/ancient DocumentUpserted: ancient would not embed" in told[0]
    assert "older than 2592000 s" in told[0] and "tenant-a/old" in told[1]
    assert f"dead letter {fresh[0]} trimmed (beyond 3 entries): acme/fresh-0" in told[2]
    assert "acme/fresh-1" in told[3]
    assert trimmed_total(streams.dead_letter, "length") >= 2


async def test_a_large_backlog_goes_in_bounded_steps(
    event_log: RedisEventLog, lease: RedisLease, prefix: str
) -> None:
    """More dead letters beyond the bound than one step reads (500): all of them go, the
    newest stay, in order."""
    streams = Streams(prefix)
    ids: list[str] = []
    for start in range(0, 1200, 400):
        ids += await event_log.append_many(
            streams.dead_letter, [dead_letter(streams, f"d{n}") for n in range(start, start + 400)]
        )
    _, trimmed = await retention(event_log, lease, streams, dead_max=100).trim()
    assert trimmed.by_length == 1100
    assert [e.id for e in await event_log.range(streams.dead_letter)] == ids[1100:]


async def test_no_length_bound_keeps_everything_within_the_age(
    event_log: RedisEventLog, lease: RedisLease, prefix: str
) -> None:
    streams = Streams(prefix)
    await event_log.append_many(streams.feedback, [feedback(n) for n in range(300)])
    await event_log.append_many(streams.dead_letter, [dead_letter(streams, "x")] * 30)
    trimmed = await retention(event_log, lease, streams).trim()
    assert [(t.by_age, t.by_length) for t in trimmed] == [(0, 0), (0, 0)]
    assert await event_log.length(streams.feedback) == 300
    assert await event_log.length(streams.dead_letter) == 30


async def test_one_process_a_period_holds_the_lease(
    lease: RedisLease, redis_target: RedisTarget, prefix: str, raw_redis: RawRedis
) -> None:
    other = RedisLease(redis_target, prefix=prefix)
    try:
        # 2 s: the four calls below must fit in one period even on a loaded machine (a 300 ms
        # period expired before the GET in one CI run on a cluster under load).
        assert await lease.take("retention", holder="a", ttl_ms=2000)
        assert not await other.take("retention", holder="b", ttl_ms=2000)
        assert not await lease.take("retention", holder="a", ttl_ms=2000)
        assert await raw_redis.get(lease.key("retention")) == b"a"
        await asyncio.sleep(2.1)
        assert await other.take("retention", holder="b", ttl_ms=300)
    finally:
        await other.close()


# --- stream sizes ----------------------------------------------------------------------------


async def test_stream_memory_is_sampled_once_a_period_and_lengths_every_time(
    event_log: RedisEventLog, prefix: str
) -> None:
    streams = Streams(prefix)
    clock = [1000.0]
    usage = StreamUsage(event_log, streams, min_interval_seconds=60, clock=lambda: clock[0])
    await event_log.append_many(streams.feedback, [feedback(n) for n in range(50)])

    first = await usage.read()
    by_name = {s.stream: s for s in first.streams}
    assert set(by_name) == set(streams.all)
    assert by_name[streams.feedback].entries == 50
    sampled = by_name[streams.feedback].memory_bytes
    assert sampled is not None and sampled > 0
    assert by_name[streams.documents].memory_bytes == 0  # sampled: the stream does not exist
    assert first.memory.used_bytes > 0 and usage.samples == 1

    await event_log.append_many(streams.feedback, [feedback(n) for n in range(500)])
    clock[0] += 59
    second = {s.stream: s for s in (await usage.read()).streams}
    assert second[streams.feedback].entries == 550  # lengths are always fresh
    assert second[streams.feedback].memory_bytes == sampled  # memory is the last sample's
    assert usage.samples == 1

    clock[0] += 2
    third = {s.stream: s for s in (await usage.read()).streams}
    assert usage.samples == 2
    assert (third[streams.feedback].memory_bytes or 0) > sampled


async def test_an_age_bound_longer_than_the_epoch_trims_nothing(
    event_log: RedisEventLog, lease: RedisLease, prefix: str
) -> None:
    """RAG_*_RETENTION may be up to 100 years, further back than any stream id."""
    streams = Streams(prefix)
    await event_log.append_many(streams.dead_letter, [dead_letter(streams, "x")] * 3)
    await event_log.append_many(streams.feedback, [feedback(1)] * 3)
    century = 100 * 365 * 86_400
    trimmed = await retention(
        event_log, lease, streams, feedback_age_s=century, dead_age_s=century
    ).trim()
    assert [(t.by_age, t.by_length) for t in trimmed] == [(0, 0), (0, 0)]
    assert await event_log.length(streams.dead_letter) == 3
