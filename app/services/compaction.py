"""Compaction: the document stream rewritten to each document's newest event, old tombstones gone.

Like a compacted Kafka topic: what a replay reads is each document's newest event (later
entries win, app/services/replay.py), so every older one is dead weight, the full text of
every past version in Redis memory. Compaction keeps, for every (tenant, document), its
newest entry under its own id, and drops the newest entry too when it is a delete older than
RAG_TOMBSTONE_RETENTION_HOURS that every consumer group has acknowledged: by then the index
has applied it and a replay has nothing to delete. The document's status records go with
its last event (unless it changed since): it is then unknown, as if it had never been
ingested, rather than "pending" for ever after a replay. Entries that do not decode are kept (the
projector dead-letters them; compaction never drops what it cannot read), and so is
everything appended after compaction began.

The stream is rewritten in place (app/adapters/redis/rewrite.py): ids, group positions and
pending entries are kept, so the projector, replays and waiting requests go on as before.
A replay from the compacted stream builds the same index as from the full one, because both
apply the same entries (tests/integration/test_compaction.py holds it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

from app.domain.document_log import newest_per_document
from app.domain.events import DocumentDeleted, DocumentUpserted, Entry, Streams
from app.domain.records import id_key
from app.ports import Decision, DocStatusStore, EventLog, LogRewriter, RewriteReport
from app.services.jobs import JobProgress

log = logging.getLogger(__name__)

Phase = Literal["reading", "rewriting", "done", "failed"]


class CompactionProgress(JobProgress, kw_only=True):
    """Where a compaction is; updated as it goes."""

    phase: Phase = "reading"
    entries_before: int = 0  # entries in the stream when it began
    documents: int = 0  # documents with an entry, deleted ones included
    read: int = 0  # entries read by the rewrite (appends during it included)
    kept: int = 0
    superseded: int = 0  # dropped: a later entry for the same document exists
    tombstones: int = 0  # dropped: settled deletes past their retention
    pending_carried: int = 0  # pending entries carried over to their consumers
    entries_after: int = 0


class Compaction:
    """One compaction of the document stream; see the module doc."""

    def __init__(
        self,
        *,
        event_log: EventLog,
        rewriter: LogRewriter,
        status: DocStatusStore,
        index_id: str,
        streams: Streams,
        tombstone_retention_seconds: float,
        # Small pages: compaction usually runs in a process that also serves searches, and
        # each page is parsed and decoded on its event loop (measured: docs/benchmarks.md).
        page: int = 250,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.event_log = event_log
        self.rewriter = rewriter
        self.status = status
        self.index_id = index_id
        self.streams = streams
        self.tombstone_retention_seconds = tombstone_retention_seconds
        self.page = page
        self.clock = clock
        self.progress = CompactionProgress(started_at=clock())

    async def run(self) -> CompactionProgress:
        stream = self.streams.documents
        try:
            newest, head = await self._newest()
            # Read before choosing: a tombstone is dropped only if every group acknowledged
            # it, and what is acknowledged now stays acknowledged.
            settled = id_key(await self.rewriter.settled_below(stream))
            # Entry ids carry the log server's clock, this the app host's: a skew of seconds
            # is nothing against a retention of hours.
            expired = id_key(f"{int((self.clock() - self.tombstone_retention_seconds) * 1000)}-0")
            self._set(phase="rewriting", documents=len(newest))
            gone: dict[str, dict[str, str]] = {}  # tenant -> doc id -> its dropped delete

            def choose(entry: Entry) -> Decision:
                event = entry.event
                if not isinstance(event, DocumentUpserted | DocumentDeleted):
                    return "keep"
                if newest[(event.tenant, event.doc_id)] != entry.id:
                    self.progress.superseded += 1
                    return "drop"
                key = id_key(entry.id)
                if isinstance(event, DocumentDeleted) and key < settled and key < expired:
                    self.progress.tombstones += 1
                    gone.setdefault(event.tenant, {})[event.doc_id] = entry.id
                    return "drop"
                return "keep"

            if head is None:
                report = RewriteReport(stream=stream)
            else:
                report = await self.rewriter.rewrite(
                    stream, choose, upto=head, on_page=self._on_page
                )
            self._on_page(report)
            for tenant, records in gone.items():
                await self.status.forget([self.index_id], tenant, records)
            after = await self.event_log.length(stream)
            self._set(
                phase="done",
                pending_carried=report.pending_carried,
                entries_after=after,
                finished_at=self.clock(),
            )
            log.info(
                "compacted %s: %d entries -> %d (%d superseded, %d tombstones) in %.1f s",
                stream,
                self.progress.entries_before,
                after,
                self.progress.superseded,
                self.progress.tombstones,
                self.progress.seconds,
            )
            return self.progress
        except BaseException as exc:
            self._set(phase="failed", finished_at=self.clock(), error=f"{exc!r}")
            raise

    async def _newest(self) -> tuple[dict[tuple[str, str], str], str | None]:
        """Each document's newest entry id, and the id of the last entry read (None for an
        empty stream)."""
        newest: dict[tuple[str, str], str] = {}
        last: str | None = None
        while True:
            page = await self.event_log.range(
                self.streams.documents,
                start="-" if last is None else f"({last}",
                count=self.page,
            )
            newest.update({key: e.id for key, e in newest_per_document(page).items()})
            if page:
                last = page[-1].id
                self._set(entries_before=self.progress.entries_before + len(page))
            if len(page) < self.page:
                return newest, last

    def _on_page(self, report: RewriteReport) -> None:
        self._set(read=report.read, kept=report.kept + report.replaced)

    def _set(self, **changes: object) -> None:
        for name, value in changes.items():
            setattr(self.progress, name, value)


def should_compact(length: int, *, last_after: int | None, min_entries: int, growth: float) -> bool:
    """Whether the stream grew enough to compact: at least `min_entries` entries (0 turns
    automatic compaction off), and `growth` times what the last compaction left."""
    if min_entries <= 0 or length < min_entries:
        return False
    return last_after is None or length >= growth * max(last_after, 1)
