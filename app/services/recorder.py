"""Records every retrieval on the retrievals stream, off the response path, and finds it again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid

from opentelemetry.trace import Span, Status, StatusCode

from app.domain.events import Entry, RetrievalRecorded
from app.errors import RagError
from app.ports import EventLog
from app.telemetry import metrics, schema, tracing

log = logging.getLogger(__name__)

# How far after a retrieval id's timestamp its event can sit in the stream: the flush delay
# plus any time Redis was unreachable while the buffer held it.
_LOOKUP_WINDOW_MS = 10 * 60 * 1000
_LOOKUP_PAGE = 500
_TRIM_EVERY_SECONDS = 60.0


def new_retrieval_id() -> str:
    """A UUIDv7: its first 48 bits are the time in ms, so the event can be found from the id
    alone by a short time-ranged read of the stream, with no separate index to keep."""
    ms = time.time_ns() // 1_000_000
    raw = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


def retrieval_time_ms(retrieval_id: str) -> int | None:
    try:
        value = uuid.UUID(retrieval_id)
    except ValueError:
        return None
    return value.int >> 80 if value.version == 7 else None


class RetrievalRecorder:
    """A bounded buffer drained in batches to the stream, so recording never waits on Redis.

    When the buffer is full (Redis slow or down) a retrieval is dropped and counted, rather
    than search slowing down or memory growing; shutdown flushes what is buffered.
    """

    def __init__(
        self,
        event_log: EventLog,
        stream: str,
        *,
        retention_seconds: float,
        capacity: int = 10_000,
        batch: int = 256,
    ) -> None:
        self.event_log = event_log
        self.stream = stream
        self.retention_seconds = retention_seconds
        self.capacity = capacity
        self.batch = batch
        self._buffer: list[RetrievalRecorded] = []
        # The rag.record span of each buffered event, in step with _buffer: started in the
        # request's trace, ended once the event is on the stream (with its id).
        self._spans: list[Span] = []
        self._wake = asyncio.Event()
        self.appended = 0
        self.dropped = 0
        self._last_trim = 0.0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def record(self, event: RetrievalRecorded) -> None:
        span = tracing.tracer().start_span(
            schema.RECORD,
            attributes={schema.STREAM: self.stream, schema.RETRIEVAL_ID: event.retrieval_id},
        )
        if len(self._buffer) >= self.capacity:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("retrieval events lost: %d (buffer full, Redis away)", self.dropped)
            metrics.event_dropped()
            span.set_attribute(schema.DROPPED, True)
            span.set_status(Status(StatusCode.ERROR, "recorder buffer full"))
            span.end()
            return
        self._buffer.append(event)
        self._spans.append(span)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Flush whenever events wait, until `stop`; then flush what is left."""
        while not stop.is_set():
            waker = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waker, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
            stopper.cancel()
            self._wake.clear()
            if not await self.flush():
                # Redis is away; keep buffering and try again soon, searches or not.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                self._wake.set()
        await self.flush()

    async def flush(self) -> bool:
        """Append everything buffered; False when the log refused (the events stay buffered)."""
        while self._buffer:
            batch = self._buffer[: self.batch]
            try:
                # Not replicated: a shortfall would have this batch, already on the
                # primary, appended again on retry; a retrieval record lost in a failover
                # costs a quality report one sample, a duplicate skews it.
                ids = await self.event_log.append_many(self.stream, batch, replicated=False)
            except RagError as exc:
                log.warning(
                    "retrieval events not recorded yet (%d buffered): %s", len(self._buffer), exc
                )
                return False
            for span, entry_id in zip(self._spans, ids, strict=False):
                span.set_attribute(schema.EVENT_ID, entry_id)
                span.end()
            del self._spans[: len(batch)]
            del self._buffer[: len(batch)]
            self.appended += len(batch)
        await self._trim()
        return True

    async def _trim(self) -> None:
        now = time.monotonic()
        if now - self._last_trim < _TRIM_EVERY_SECONDS:
            return
        self._last_trim = now
        try:
            trimmed = await self.event_log.trim_older_than(self.stream, self.retention_seconds)
            metrics.stream_trimmed(self.stream, "age", trimmed)
        except RagError as exc:
            log.warning("retrieval retention trim failed: %s", exc)

    async def find(self, tenant: str, retrieval_id: str) -> RetrievalRecorded | None:
        """The recorded retrieval, from the buffer or the stream; None if unknown or expired."""
        for event in self._buffer:
            if event.retrieval_id == retrieval_id and event.tenant == tenant:
                return event
        at_ms = retrieval_time_ms(retrieval_id)
        if at_ms is None:
            return None
        start, end = f"{max(0, at_ms - 1000)}-0", f"{at_ms + _LOOKUP_WINDOW_MS}-0"
        while True:
            entries: list[Entry] = await self.event_log.range(
                self.stream, start=start, end=end, count=_LOOKUP_PAGE
            )
            for entry in entries:
                found = entry.event
                if (
                    isinstance(found, RetrievalRecorded)
                    and found.retrieval_id == retrieval_id
                    and found.tenant == tenant
                ):
                    return found
            if len(entries) < _LOOKUP_PAGE:
                return None
            start = f"({entries[-1].id}"
