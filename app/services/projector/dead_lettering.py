"""Moves entries the projector gives up on to the dead-letter stream; their documents are failed."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence

from app.domain.doc_status import Applied
from app.domain.events import DocumentDeleted, DocumentUpserted, Entry, EventDeadLettered, Streams
from app.ports import DocStatusStore, EventLog
from app.services.indexing import Indexer
from app.services.projector.apply import failed_record
from app.services.projector.config import GROUP, ProjectorCounts
from app.telemetry import metrics

log = logging.getLogger(__name__)


class DeadLetterer:
    """Dead-letters entries of `streams.documents` for group `indexer`."""

    def __init__(
        self,
        log: EventLog,
        indexer: Indexer,
        status: DocStatusStore,
        *,
        streams: Streams,
        index_id: str,
        counts: ProjectorCounts,
    ) -> None:
        self.log = log
        self.indexer = indexer
        self.status = status
        self.streams = streams
        self.index_id = index_id
        self.counts = counts

    async def dead_letter(
        self, entries: Sequence[tuple[Entry, str]], counts: dict[str, int] | None = None
    ) -> None:
        """Move entries to the dead-letter stream with why, drop any points they wrote,
        mark their documents failed and acknowledge them, in that order: a crash in between
        repeats a step, never skips one. `counts`: their strikes, if read already."""
        stream = self.streams.documents
        ids = [entry.id for entry, _ in entries]
        if counts is None:
            counts = await self.log.strikes(stream, GROUP, ids)
        now = time.time()
        await self.log.append_many(
            self.streams.dead_letter,
            [
                EventDeadLettered(
                    source_stream=stream,
                    source_id=entry.id,
                    group=GROUP,
                    raw=entry.raw,
                    error=error,
                    deliveries=counts.get(entry.id, 1),
                    at=now,
                )
                for entry, error in entries
            ],
        )
        failed: dict[str, dict[str, Applied]] = defaultdict(dict)
        for entry, error in entries:
            event = entry.event
            if isinstance(event, DocumentUpserted):
                # An attempt that died after writing left points no record names.
                await self.indexer.drop_written_by(event.tenant, event.doc_id, entry.id)
            if isinstance(event, DocumentUpserted | DocumentDeleted):
                failed[event.tenant][event.doc_id] = failed_record(entry.id, event, error, now)
            log.error(
                "dead-lettered %s after %d strikes: %s", entry.id, counts.get(entry.id, 1), error
            )
        for tenant, records in failed.items():
            await self.status.record_applied(self.index_id, tenant, records)
        await self.log.ack(stream, GROUP, ids)
        await self.log.clear_strikes(stream, GROUP, ids)
        self.counts.dead_lettered += len(entries)
        metrics.dead_lettered(len(entries))
