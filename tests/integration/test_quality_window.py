"""The quality report's bounded, paged read of a stream window against a real Redis."""

from __future__ import annotations

import pytest

from app.adapters.redis.streams import RedisEventLog
from app.domain.events import FeedbackGiven, RetrievalRecorded
from app.services.quality_window import read_window
from tests.integration.redis_fixtures import ALL_BACKENDS

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
