"""Applies document entries to the index in stream order per document, whatever order they come in.

Each document's applied record (app/domain/doc_status.py) names the newest entry the index
reflects and only moves forward (compare-and-set in the status store); points are swept only
by the winner of that record, after it is stored. The live projector and a replay
(app/services/replay.py) both apply through `Applier`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

from app.domain.doc_status import Applied
from app.domain.events import DocumentDeleted, DocumentUpserted, Entry
from app.domain.records import Chunk, id_key
from app.errors import DependencyUnavailable
from app.ports import DocStatusStore, EmbeddingCache
from app.services.indexing import Indexer
from app.services.projector.config import ProjectorConfig, ProjectorCounts
from app.services.projector.embedding import ChunkWriter

log = logging.getLogger(__name__)


class Item(NamedTuple):
    entry: Entry
    event: DocumentUpserted | DocumentDeleted


def failed_record(
    entry_id: str, event: DocumentUpserted | DocumentDeleted, error: str, at: float
) -> Applied:
    """The applied record of an entry given up on: its document is failed."""
    return Applied(
        event_id=entry_id,
        status="failed",
        version=event.version if isinstance(event, DocumentUpserted) else None,
        error=error,
        at=at,
    )


class Applier:
    """Brings one index (`index_id`'s applied records) up to date with document entries."""

    def __init__(
        self,
        indexer: Indexer,
        cache: EmbeddingCache,
        status: DocStatusStore,
        *,
        index_id: str,
        config: ProjectorConfig,
        counts: ProjectorCounts | None = None,
        planned: dict[str, list[Chunk]] | None = None,
    ) -> None:
        self.indexer = indexer
        # Chunks planned ahead by entry id (a replay plans its next batches while the
        # index writes the current one); each is taken once, and entries not in it are
        # planned here.
        self.planned = planned if planned is not None else {}
        self.status = status
        # Applied records are per index: one built by another model starts with none, and
        # so does a generation a replay builds (app/services/replay.py names its own index id).
        self.index_id = index_id
        self.config = config
        self.counts = counts if counts is not None else ProjectorCounts()
        self.writer = ChunkWriter(indexer.embedder, indexer.index, cache, step=config.write_chunks)

    async def apply_entries(self, entries: Sequence[Entry]) -> dict[str, str]:
        """Apply document entries and record them, outside the consumer group (nothing is
        acknowledged or dead-lettered): how a replay fills a new generation, through the
        same steps as the projector. Entries that are not document events are skipped (the
        group's projector dead-letters them). An entry that fails on its own is recorded
        failed; returns {entry id: error} for those. An outage raises."""
        items = [
            Item(e, e.event)
            for e in entries
            if isinstance(e.event, DocumentUpserted | DocumentDeleted)
        ]
        if not items:
            return {}
        try:
            await self.apply(items)
            return {}
        except DependencyUnavailable:
            raise
        except Exception:
            log.warning("replay batch failed; applying its %d entries one by one", len(items))
        failures: dict[str, str] = {}
        for item in items:
            try:
                await self.apply([item])
            except DependencyUnavailable:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                failures[item.entry.id] = error
                event = item.event
                await self.status.record_applied(
                    self.index_id,
                    event.tenant,
                    {event.doc_id: failed_record(item.entry.id, event, error, time.time())},
                )
        return failures

    async def apply(self, items: Sequence[Item], *, dirty: bool = False) -> None:
        """Bring the index up to date with these entries (any order, any repetition, any
        number of projectors at once; docs/design.md, "Several projectors").

        Each document's applied record only moves forward (compare-and-set in the status
        store), and points are swept only by the winner of that record, after it is stored,
        and only those of older events; a loser drops the points it wrote itself. `dirty`:
        the entries may have written points in an earlier, unfinished attempt."""
        newest: dict[tuple[str, str], Item] = {}
        for item in items:
            key = (item.event.tenant, item.event.doc_id)
            if key not in newest or id_key(item.entry.id) > id_key(newest[key].entry.id):
                newest[key] = item
        skipped = len(items) - len(newest)  # superseded within the batch

        by_tenant: dict[str, list[Item]] = defaultdict(list)
        for item in newest.values():
            by_tenant[item.event.tenant].append(item)
        upserts: list[tuple[Item, DocumentUpserted]] = []
        unchanged: list[tuple[Item, DocumentUpserted, Applied]] = []
        deletes: list[Item] = []
        unrecorded: dict[str, set[str]] = defaultdict(set)
        for tenant, group in by_tenant.items():
            current = await self.status.applied(
                self.index_id, tenant, [i.event.doc_id for i in group]
            )
            for item, applied in zip(group, current, strict=True):
                event = item.event
                if applied is None:
                    unrecorded[tenant].add(event.doc_id)
                if applied is not None and id_key(applied.event_id) >= id_key(item.entry.id):
                    skipped += 1  # the index already reflects this entry or a later one
                elif isinstance(event, DocumentDeleted):
                    deletes.append(item)
                elif (
                    applied is not None
                    and applied.status == "indexed"
                    and applied.version == event.version
                    and applied.points is not None
                ):
                    unchanged.append((item, event, applied))
                else:
                    upserts.append((item, event))
        self._maybe_crash([i for i, _ in upserts] + [i for i, _, _ in unchanged] + deletes)

        plans = await asyncio.to_thread(self._plan, [(i.entry.id, e) for i, e in upserts])
        await self.writer.write([chunk for plan in plans for chunk in plan])

        now = time.time()
        records: dict[str, dict[str, Applied]] = defaultdict(dict)
        expect: dict[str, dict[str, str]] = defaultdict(dict)
        for (item, event), plan in zip(upserts, plans, strict=True):
            records[event.tenant][event.doc_id] = Applied(
                event_id=item.entry.id,
                status="indexed",
                version=event.version,
                chunks=len(plan),
                points=item.entry.id,
                at=now,
            )
        for item, event, applied in unchanged:
            # Its version's points are there already: adopted, if the record they belong
            # to is still the one in force.
            records[event.tenant][event.doc_id] = Applied(
                event_id=item.entry.id,
                status="indexed",
                version=event.version,
                chunks=applied.chunks,
                points=applied.points,
                at=now,
            )
            expect[event.tenant][event.doc_id] = applied.event_id
        for item in deletes:
            records[item.event.tenant][item.event.doc_id] = Applied(
                event_id=item.entry.id, status="deleted", at=now
            )
        stored: set[tuple[str, str]] = set()
        for tenant, by_doc in records.items():
            won = await self.status.record_applied(
                self.index_id, tenant, by_doc, expect=expect.get(tenant)
            )
            stored |= {(tenant, doc_id) for doc_id in won}

        # Winners sweep what older events wrote; losers drop what they wrote themselves.
        # A fresh generation holds nothing of a document it has no record of.
        def fresh(tenant: str, doc_id: str) -> bool:
            return self.config.fresh_index and doc_id in unrecorded[tenant]

        sweeps = []
        for item, event in upserts:
            if (event.tenant, event.doc_id) not in stored:
                sweeps.append(
                    self.indexer.drop_written_by(event.tenant, event.doc_id, item.entry.id)
                )
            elif not fresh(event.tenant, event.doc_id):
                sweeps.append(self.indexer.sweep(event.tenant, event.doc_id, before=item.entry.id))
        for item in deletes:
            key = (item.event.tenant, item.event.doc_id)
            if key in stored and not fresh(*key):
                sweeps.append(self.indexer.sweep(*key, before=item.entry.id))
        for _, event, applied in unchanged:
            if (event.tenant, event.doc_id) in stored and applied.points is not None:
                sweeps.append(self.indexer.sweep(event.tenant, event.doc_id, before=applied.points))
        await asyncio.gather(*sweeps)
        lost = [item for item, event, _ in unchanged if (event.tenant, event.doc_id) not in stored]

        if dirty:
            done = {i.entry.id for i, _ in upserts} | {i.entry.id for i in deletes}
            done |= {i.entry.id for i, _, _ in unchanged}
            await self._tidy([i for i in items if i.entry.id not in done])

        self.counts.applied += len(upserts) + len(unchanged) - len(lost) + len(deletes)
        self.counts.chunks += sum(len(plan) for plan in plans)
        self.counts.skipped += skipped
        if lost:
            # Another projector replaced the record whose points this entry would adopt:
            # decide again against the record now in force.
            await self.apply(lost, dirty=dirty)

    async def _tidy(self, items: Sequence[Item]) -> None:
        """Finish what an earlier attempt at these (skipped) entries may have left: the
        sweep of an entry whose record was stored, or the points of one that lost."""
        by_tenant: dict[str, list[Item]] = defaultdict(list)
        for item in items:
            by_tenant[item.event.tenant].append(item)
        for tenant, group in by_tenant.items():
            records = await self.status.applied(
                self.index_id, tenant, [i.event.doc_id for i in group]
            )
            for item, record in zip(group, records, strict=True):
                doc_id = item.event.doc_id
                if record is not None and record.event_id == item.entry.id:
                    if record.status == "deleted" or record.points is not None:
                        before = record.points or record.event_id
                        await self.indexer.sweep(tenant, doc_id, before=before)
                elif isinstance(item.event, DocumentUpserted) and (
                    record is None or record.points != item.entry.id
                ):
                    await self.indexer.drop_written_by(tenant, doc_id, item.entry.id)

    def _maybe_crash(self, items: Sequence[Item]) -> None:
        """The fault-injection hook RAG_FAULT_KILL_DOC_ID (tests only): die as a poison
        event would, by SIGKILL, whenever that document is about to be applied."""
        target = self.config.kill_on_doc
        if target and any(i.event.doc_id == target for i in items):
            log.critical("RAG_FAULT_KILL_DOC_ID: killing this process applying %s", target)
            os.kill(os.getpid(), signal.SIGKILL)

    def _plan(self, events: Sequence[tuple[str, DocumentUpserted]]) -> list[list[Chunk]]:
        # Chunking tokenizes every document: CPU work kept off the event loop.
        return [
            self.planned.pop(event_id)
            if event_id in self.planned
            else self.indexer.plan_event(event, event_id)
            for event_id, event in events
        ]
