"""The quality report over a recent window: a bounded, paged read of the retrieval and
feedback streams, handed to the pure computation (app/services/quality.py)."""

from __future__ import annotations

from typing import TypeVar

from app.domain.events import FeedbackGiven, RetrievalRecorded, Streams
from app.ports import EventLog
from app.services.quality import QualityReport, quality_report

# At most this many entries are read per stream per report. Decoding is the cost (measured
# ~130 us per retrieval event of 10 results on the 2-core machine under load, ~2.6 s for the
# cap; the report itself is a tenth of that), and it holds the event loop, so it is read in
# small pages: searches run between them. Past the cap the report says it is truncated and
# up to when it covers.
MAX_EVENTS = 20_000
_PAGE = 250

E = TypeVar("E", RetrievalRecorded, FeedbackGiven)


async def window_report(
    log: EventLog, streams: Streams, *, tenant: str, since: float, until: float, k: int
) -> QualityReport:
    """`tenant`'s quality report over since..until (epoch seconds), precision at `k`."""
    # Entry ids carry the time the log accepted them, which is at or after the event's
    # `at`, so reading from `since` finds every event of the window (clock skew aside).
    start = f"{int(since * 1000)}-0"
    retrieved, r_cut = await read_window(
        log, streams.retrievals, start, RetrievalRecorded, MAX_EVENTS
    )
    feedback, f_cut = await read_window(log, streams.feedback, start, FeedbackGiven, MAX_EVENTS)
    window_start, feedback_start = [
        await oldest(log, s) for s in (streams.retrievals, streams.feedback)
    ]
    cut = min((c for c in (r_cut, f_cut) if c is not None), default=None)
    if cut is not None:
        # Report only the span both streams were read over: retrievals later than the cut
        # would otherwise look unjudged for want of feedback that was never read.
        retrieved = [r for r in retrieved if r.at <= cut]
    return quality_report(
        retrieved,
        feedback,
        tenant=tenant,
        since=since,
        until=until,
        k=k,
        truncated=cut is not None,
        read_until=until if cut is None else cut,
        window_start=window_start,
        feedback_start=feedback_start,
    )


async def oldest(log: EventLog, stream: str) -> float | None:
    """When the oldest entry still in `stream` was appended (epoch s); None if it is empty."""
    first = await log.range(stream, count=1)
    return first[0].timestamp_ms / 1000 if first else None


async def read_window(
    log: EventLog, stream: str, start: str, kind: type[E], limit: int
) -> tuple[list[E], float | None]:
    """Events of type `kind` from `start` on, oldest first, reading at most `limit` entries;
    with the time (epoch s) of the last entry read when the limit cut the read short."""
    found: list[E] = []
    read = 0
    while True:
        page = min(_PAGE, limit - read)
        entries = await log.range(stream, start=start, count=page)
        read += len(entries)
        found.extend(e.event for e in entries if isinstance(e.event, kind))
        if len(entries) < page:
            return found, None
        start = f"({entries[-1].id}"
        if read >= limit:
            more = await log.range(stream, start=start, count=1)
            return found, (entries[-1].timestamp_ms / 1000 if more else None)
