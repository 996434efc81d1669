"""Automatic compaction: the process that projects compacts the document stream once it grew."""

from __future__ import annotations

import asyncio
import logging

from app.domain.events import Streams
from app.errors import RagError
from app.ports import EventLog
from app.services.compaction import CompactionProgress, should_compact
from app.services.jobs import Jobs, JobStore

log = logging.getLogger(__name__)


class AutoCompaction:
    """Every `every` seconds, compact if the stream reached `min_entries` entries and `growth`
    times what the last compaction (by any process) left; one XLEN and one GET a check."""

    def __init__(
        self,
        jobs: Jobs[CompactionProgress],
        store: JobStore[CompactionProgress],
        event_log: EventLog,
        streams: Streams,
        *,
        min_entries: int,
        growth: float,
        every: float,
    ) -> None:
        self.jobs = jobs
        self.store = store
        self.event_log = event_log
        self.streams = streams
        self.min_entries = min_entries
        self.growth = growth
        self.every = every

    async def run(self, stop: asyncio.Event) -> None:
        if self.min_entries <= 0:
            return
        while True:
            try:
                await asyncio.wait_for(stop.wait(), self.every)
                return
            except TimeoutError:
                pass
            try:
                await self.check()
            except RagError as exc:  # an outage, or another process compacting: next time
                log.warning("automatic compaction skipped: %s", exc)

    async def check(self) -> bool:
        """Compact now if the stream grew enough; whether it did."""
        if self.jobs.running:
            return False
        length = await self.event_log.length(self.streams.documents)
        last = await self.store.latest()
        if not should_compact(
            length,
            last_after=None if last is None else last.progress.entries_after,
            min_entries=self.min_entries,
            growth=self.growth,
        ):
            return False
        log.info("document stream at %d entries: compacting", length)
        self.jobs.start()
        await self.jobs.wait()
        return True
