"""The quality report's bounded, paged read of a stream window against a real Redis."""

from __future__ import annotations

import pytest

from app.adapters.redis.streams import EVENT_FIELD, RedisEventLog
from app.domain.events import FeedbackGiven, RetrievalRecorded, Streams, encode_event
from app.services.quality_window import read_window, window_report
from tests.integration.redis_fixtures import ALL_BACKENDS, RawRedis

pytest_plugins = ("tests.integration.redis_fixtures",)
pytestmark = pytest.mark.anyio
REDIS_BACKENDS = ALL_BACKENDS


def feedback(i: int) -> FeedbackGiven:
    return FeedbackGiven(
        retrieval_id=f"r{i}", tenant="t", doc_id="d", chunk_id=None, relevance=1, at=float(i)
    )


async def test_reads_in_pages_up_to_the_bound_and_says_where_it_stopped(
    event_log: RedisEventLog, prefix: str
) -> None:
    stream = f"{prefix}feedback"
    ids: list[str] = []
    for start in range(0, 2500, 500):
        ids += await event_log.append_many(stream, [feedback(i) for i in range(start, start + 500)])

    everything, cut = await read_window(event_log, stream, "0-0", FeedbackGiven, 10_000)
    assert cut is None and [f.retrieval_id for f in everything] == [f"r{i}" for i in range(2500)]

    exact, cut = await read_window(event_log, stream, "0-0", FeedbackGiven, 2500)
    assert cut is None and len(exact) == 2500  # the bound reached, but nothing left out

    bounded, cut = await read_window(event_log, stream, "0-0", FeedbackGiven, 1200)
    assert len(bounded) == 1200 and bounded[-1].retrieval_id == "r1199"
    assert cut == int(ids[1199].split("-")[0]) / 1000

    later, cut = await read_window(event_log, stream, f"({ids[2399]}", FeedbackGiven, 1200)
    assert cut is None and [f.retrieval_id for f in later] == [f"r{i}" for i in range(2400, 2500)]

    # Entries of another type are read (they count against the bound) but not returned.
    other, cut = await read_window(event_log, stream, "0-0", RetrievalRecorded, 10_000)
    assert other == [] and cut is None


async def test_the_report_says_what_retention_left_of_its_window(
    event_log: RedisEventLog, raw_redis: RawRedis, prefix: str
) -> None:
    """Two days of retrievals asked for, the older day trimmed: the report starts where the
    stream does now, and says the hours asked for reach past it."""
    streams = Streams(prefix)
    seconds, micros = await raw_redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    day_ms = 86_400_000
    for age_ms in (36 * 3_600_000, 30 * 3_600_000, 2 * 3_600_000):
        event = retrieval(f"r{age_ms}", (now_ms - age_ms) / 1000)
        await raw_redis.xadd(
            streams.retrievals, {EVENT_FIELD: encode_event(event)}, id=f"{now_ms - age_ms}-0"
        )
    await raw_redis.xadd(
        streams.feedback, {EVENT_FIELD: encode_event(feedback(1))}, id=f"{now_ms - 3_600_000}-0"
    )
    now = now_ms / 1000

    before = await window_report(
        event_log, streams, tenant="t", since=now - 48 * 3600, until=now, k=5
    )
    assert before.retrievals == 3 and before.window_start == (now_ms - 36 * 3_600_000) / 1000
    assert before.hours_exceed_window  # 48 h asked, 36 h held

    assert await event_log.trim_older_than(streams.retrievals, day_ms / 1000) == 2
    after = await window_report(
        event_log, streams, tenant="t", since=now - 48 * 3600, until=now, k=5
    )
    assert after.retrievals == 1 and after.window_start == (now_ms - 2 * 3_600_000) / 1000
    assert after.hours_exceed_window
    assert after.feedback_start == (now_ms - 3_600_000) / 1000
    within = await window_report(event_log, streams, tenant="t", since=now - 3600, until=now, k=5)
    assert not within.hours_exceed_window


def retrieval(retrieval_id: str, at: float) -> RetrievalRecorded:
    return RetrievalRecorded(
        retrieval_id=retrieval_id,
        tenant="t",
        query="q",
        query_sha256=None,
        params={},
        results=[],
        timings_ms={"total": 1.0},
        trace_id=None,
        at=at,
    )
