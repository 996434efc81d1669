"""The retrieval recorder while Redis is unreachable: search never waits, what does not fit
the buffer is counted as lost, what fits is written once Redis answers again."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.adapters.redis.client import RedisTarget
from app.adapters.redis.streams import RedisEventLog
from app.domain.events import RetrievalRecorded
from app.services.recorder import RetrievalRecorder, new_retrieval_id
from tests.integration.redis_fixtures import ALL_BACKENDS

pytest_plugins = ("tests.integration.redis_fixtures",)
pytestmark = pytest.mark.anyio
REDIS_BACKENDS = ALL_BACKENDS


def event() -> RetrievalRecorded:
    return RetrievalRecorded(
        retrieval_id=new_retrieval_id(),
        tenant="default",
        query="q",
        query_sha256=None,
        params={},
        results=[],
        timings_ms={},
        trace_id=None,
        at=time.time(),
    )


async def test_events_past_the_buffer_are_counted_as_lost(closed_port_url: str) -> None:
    log = RedisEventLog(closed_port_url, pool_size=2)
    recorder = RetrievalRecorder(log, "test:retrievals", retention_seconds=60, capacity=3)
    try:
        started = time.perf_counter()
        for _ in range(5):
            recorder.record(event())
        assert time.perf_counter() - started < 0.05  # never waits on Redis
        assert (recorder.buffered, recorder.dropped, recorder.appended) == (3, 2, 0)
        assert await recorder.flush() is False  # Redis away: kept, not lost
        assert (recorder.buffered, recorder.dropped) == (3, 2)
    finally:
        await log.close()


async def test_buffered_events_are_written_when_redis_answers(
    redis_target: RedisTarget, prefix: str
) -> None:
    log = RedisEventLog(redis_target, pool_size=2)
    recorder = RetrievalRecorder(log, f"{prefix}retrievals", retention_seconds=60, capacity=3)
    try:
        for _ in range(2):
            recorder.record(event())
        stop = asyncio.Event()
        task = asyncio.create_task(recorder.run(stop))
        stop.set()
        await task
        assert (recorder.appended, recorder.buffered, recorder.dropped) == (2, 0, 0)
        assert await log.length(f"{prefix}retrievals") == 2
    finally:
        await log.close()
