"""Replay: rebuild the index from the start of the document stream into a new generation.

1. Read `rag:documents` from the start to its head, folding it to each document's newest
   entry (later entries win: a deleted document stays deleted, an older version never
   overwrites a newer one).
2. Create a new, empty generation (IndexCatalog.create), offering the catalog the chunks
   step 3 will write: the cluster adapter measures their mean BM25 length from them, since
   its sparse vectors have the length normalisation baked in; Edge ignores them.
3. Apply those entries to it through the projector's own apply path (`Applier` in
   app/services/projector/apply.py: chunking, embedding cache, embedder, upserts), recording
   applied records under an index id of the replay's own. Searches and the live projector keep
   using the active generation meanwhile.
4. Catch up: apply what was appended since, page by page, to the new generation.
5. Pause the live projector (its batch in hand finishes first), catch up to the head once
   more, activate the new generation (reads and writes switch at once; the old one is
   dropped) and adopt the replay's applied records as the index's, then resume. Whatever
   the live projector had not applied yet is either in the new generation already (and is
   skipped by its applied record) or comes after the head, and is applied as usual.

A failure or a cancellation before the swap discards the new generation; a crash leaves it
on disk, and the catalog removes it at the next start. Either way the active generation is
untouched and no event is lost: the stream is only read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Literal

import msgspec

from app.domain.document_log import DocKey, newest_per_document
from app.domain.events import DocumentDeleted, DocumentUpserted, Entry, Streams
from app.domain.records import Chunk
from app.errors import DependencyUnavailable
from app.ports import DocStatusStore, Embedder, EmbeddingCache, EventLog, IndexCatalog
from app.services.indexing import Indexer
from app.services.jobs import JobProgress
from app.services.projector import Projector, ProjectorConfig
from app.services.projector.apply import Applier

log = logging.getLogger(__name__)

Phase = Literal["reading", "rebuilding", "catching_up", "swapping", "done", "failed"]

_ADOPT_ATTEMPTS = 30


class ReplayConfig(msgspec.Struct, frozen=True, kw_only=True):
    batch: int = 512  # documents applied at a time (and embedded across)
    page: int = 1000  # stream entries read per round trip
    write_chunks: int = 512  # chunks embedded and written per index write
    # Batches of the bulk pass applied at once: one is chunked (tokenizing, on the event
    # loop's thread) while another is written (in the engine, off it). Each document is in
    # one batch only, so they cannot reorder anything.
    in_flight: int = 2
    # Catch-up passes before pausing the live projector: each one shortens what is left to
    # apply while it is paused; the last one runs paused, however long it is.
    catch_up_rounds: int = 5


class ReplayProgress(JobProgress, kw_only=True):
    """Where a replay is; updated as it goes."""

    phase: Phase = "reading"
    generation: str | None = None  # the generation being built (then the active one)
    entries: int = 0  # stream entries read
    documents: int = 0  # documents the bulk pass applies (final states, deletes included)
    applied: int = 0  # of those, applied so far
    caught_up: int = 0  # entries applied after the bulk pass
    chunks: int = 0  # chunks written to the new generation
    failed: int = 0  # entries that could not be applied (recorded failed)


class Replay:
    """One rebuild of the index from the document stream; see the module doc."""

    def __init__(
        self,
        *,
        catalog: IndexCatalog,
        event_log: EventLog,
        embedder: Embedder,
        cache: EmbeddingCache,
        status: DocStatusStore,
        streams: Streams,
        live: Projector | None,
        config: ReplayConfig | None = None,
        on_progress: Callable[[ReplayProgress], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.event_log = event_log
        self.embedder = embedder
        self.cache = cache
        self.status = status
        self.streams = streams
        self.live = live
        self.config = config or ReplayConfig()
        self.progress = ReplayProgress(started_at=time.time())
        self._on_progress = on_progress
        self._tenants: set[str] = set()

    async def run(self) -> ReplayProgress:
        """Rebuild, swap, and return the final progress; raises if the replay failed (the
        active generation is then unchanged)."""
        generation: str | None = None
        scratch = ""
        swapped = False
        try:
            finals, last = await self._read()
            batches = [
                finals[start : start + self.config.batch]
                for start in range(0, len(finals), self.config.batch)
            ]
            # Chunking runs ahead of the writes from here on: while the new generation is
            # created (the Edge builder child starting) and while it writes each batch.
            ahead = _PlanAhead(
                Indexer(self.embedder, self.catalog.current()),
                batches,
                depth=self.config.in_flight + 1,
            )
            async with ahead.running():
                # Read first, so that a catalog that must know the corpus before its first
                # write (the cluster's BM25 length normalisation) can measure what the bulk
                # pass writes.
                generation, index = await self.catalog.create(corpus=self._planned(finals))
                self.progress.generation = generation
                # Unique per attempt, so records left by a crashed replay are never ours.
                scratch = f"{self.embedder.model_id}~replay-{generation}-{uuid.uuid4().hex[:8]}"
                applier = Applier(
                    Indexer(self.embedder, index),
                    self.cache,
                    self.status,
                    index_id=scratch,
                    config=ProjectorConfig(write_chunks=self.config.write_chunks, fresh_index=True),
                    planned=ahead.plans,
                )
                await self._bulk(applier, batches, ahead)
            self._set(phase="catching_up")
            for _ in range(self.config.catch_up_rounds):
                last, read = await self._catch_up(applier, last)
                if read < self.config.page:
                    break
            async with self._paused():
                self._set(phase="swapping")
                last, _ = await self._catch_up(applier, last, to_head=True)
                await self.catalog.activate(generation)
                swapped = True
                await self._adopt(scratch)
            self._set(phase="done", finished_at=time.time())
            log.info(
                "replay done: generation %s, %d documents, %d chunks in %.1f s",
                generation,
                self.progress.documents,
                self.progress.chunks,
                self.progress.seconds,
            )
            return self.progress
        except BaseException as exc:
            self._set(phase="failed", finished_at=time.time(), error=f"{exc!r}")
            if generation is not None and not swapped:
                await asyncio.shield(self._abandon(generation, scratch))
            raise

    async def _read(self) -> tuple[list[Entry], str]:
        """Fold the stream to each document's newest entry; returns those and the id of the
        last entry read (the head when reading started)."""
        newest: dict[DocKey, Entry] = {}
        last = "0-0"
        while True:
            page = await self.event_log.range(
                self.streams.documents, start=f"({last}", count=self.config.page
            )
            if not page:
                break
            newest.update(newest_per_document(page))
            last = page[-1].id
            self._set(entries=self.progress.entries + len(page))
        self._tenants.update(tenant for tenant, _ in newest)
        return list(newest.values()), last

    async def _planned(self, finals: list[Entry]) -> AsyncIterator[list[Chunk]]:
        """The chunks the bulk pass will write, a batch of documents at a time, planned as
        the projector plans them (nothing is planned unless the catalog reads this)."""
        planner = Indexer(self.embedder, self.catalog.current())
        upserts = [e.event for e in finals if isinstance(e.event, DocumentUpserted)]
        for start in range(0, len(upserts), self.config.batch):
            # In a thread, as the projector chunks; a batch at a time, so that a cancellation
            # (a shutdown) takes effect between batches.
            yield await asyncio.to_thread(
                _plan_all, planner, upserts[start : start + self.config.batch]
            )

    async def _bulk(self, applier: Applier, batches: list[list[Entry]], ahead: _PlanAhead) -> None:
        """Apply each document's newest entry, `in_flight` batches at a time."""
        self._set(phase="rebuilding", documents=sum(map(len, batches)))
        gate = asyncio.Semaphore(self.config.in_flight)

        async def one(number: int, part: list[Entry]) -> None:
            async with gate:
                await ahead.planned(number)
                try:
                    await self._apply(applier, part)
                finally:
                    ahead.applied(number, part)
                self._set(applied=self.progress.applied + len(part))

        try:
            async with asyncio.TaskGroup() as group:
                for number, part in enumerate(batches):
                    group.create_task(one(number, part))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from failed  # the first cause, not the group

    async def _catch_up(
        self, applier: Applier, last: str, *, to_head: bool = False
    ) -> tuple[str, int]:
        """Apply entries after `last`, one page (or, `to_head`, every page); returns the new
        last id and how many entries the last page had."""
        while True:
            page = await self.event_log.range(
                self.streams.documents, start=f"({last}", count=self.config.page
            )
            if page:
                self._tenants.update(
                    e.event.tenant
                    for e in page
                    if isinstance(e.event, DocumentUpserted | DocumentDeleted)
                )
                await self._apply(applier, page)
                last = page[-1].id
                self._set(
                    entries=self.progress.entries + len(page),
                    caught_up=self.progress.caught_up + len(page),
                )
            if not to_head or len(page) < self.config.page:
                return last, len(page)

    async def _apply(self, applier: Applier, entries: list[Entry]) -> None:
        failures = await applier.apply_entries(entries)
        for entry_id, error in failures.items():
            log.error("replay could not apply %s: %s", entry_id, error)
        # The applier is this replay's own: its count is the new generation's.
        self._set(chunks=applier.counts.chunks, failed=self.progress.failed + len(failures))

    @contextlib.asynccontextmanager
    async def _paused(self) -> AsyncIterator[None]:
        if self.live is None:
            yield
            return
        async with self.live.pause():
            yield

    async def _adopt(self, scratch: str) -> None:
        """The replay's applied records become the index's. The new generation is active
        already, so this is retried (the projector stays paused) rather than given up."""
        tenants = sorted(self._tenants)
        for attempt in range(1, _ADOPT_ATTEMPTS + 1):
            try:
                await self.status.adopt_applied(self.embedder.model_id, scratch, tenants)
                return
            except DependencyUnavailable as exc:
                if attempt == _ADOPT_ATTEMPTS:
                    # The projector then re-applies what it had not applied yet: the index
                    # converges, and the document statuses with it.
                    log.error("replay swapped but could not adopt the applied records: %s", exc)
                    return
                await asyncio.sleep(min(attempt, 5))

    async def _abandon(self, generation: str, scratch: str) -> None:
        try:
            await self.catalog.discard(generation)
            await self.status.drop_applied(scratch, sorted(self._tenants))
        except Exception:
            log.exception("cleaning up after a failed replay (generation %s)", generation)

    def _set(self, **changes: object) -> None:
        for name, value in changes.items():
            setattr(self.progress, name, value)
        if self._on_progress is not None:
            self._on_progress(self.progress)


class _PlanAhead:
    """Chunks the bulk pass's batches in order, in a thread, at most `depth` batches ahead
    of those applied: the parent's chunking then overlaps the builder's writes instead of
    alternating with them. What it plans is in `plans` (by entry id) for the `Applier` to
    take; an event that does not chunk is left out, for the `Applier` to fail as usual."""

    def __init__(self, planner: Indexer, batches: list[list[Entry]], *, depth: int) -> None:
        self.plans: dict[str, list[Chunk]] = {}
        self._planner = planner
        self._batches = batches
        self._room = asyncio.Semaphore(depth)
        self._ready = [asyncio.Event() for _ in batches]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def planned(self, number: int) -> None:
        """Wait until batch `number` is planned."""
        await self._ready[number].wait()

    def applied(self, number: int, batch: list[Entry]) -> None:
        """Batch `number` is applied: make room for another, and drop what it left."""
        for entry in batch:
            self.plans.pop(entry.id, None)
        self._room.release()

    async def _run(self) -> None:
        try:
            for number, batch in enumerate(self._batches):
                await self._room.acquire()
                upserts = [
                    (entry.id, entry.event)
                    for entry in batch
                    if isinstance(entry.event, DocumentUpserted)
                ]
                self.plans.update(await asyncio.to_thread(_plan_entries, self._planner, upserts))
                self._ready[number].set()
        finally:
            # Stopped early (cancelled, or failed): whatever is not planned yet, the
            # Applier plans itself.
            for ready in self._ready:
                ready.set()


def _plan_entries(
    planner: Indexer, events: list[tuple[str, DocumentUpserted]]
) -> dict[str, list[Chunk]]:
    """The chunks of these entries, as `Applier` plans them; those that fail are left out."""
    out: dict[str, list[Chunk]] = {}
    for entry_id, event in events:
        try:
            out[entry_id] = planner.plan_event(event, entry_id)
        except Exception:  # the Applier tries again, and records it failed
            log.debug("replay: %s/%s does not chunk", event.tenant, event.doc_id, exc_info=True)
    return out


def _plan_all(planner: Indexer, events: list[DocumentUpserted]) -> list[Chunk]:
    """The chunks of these documents as `Applier` plans them (app/services/projector/apply.py)."""
    out: list[Chunk] = []
    for event in events:
        try:
            out += planner.plan_event(event)
        except Exception:  # the projector records it failed, and it writes nothing
            log.debug("replay: %s/%s does not chunk", event.tenant, event.doc_id, exc_info=True)
    return out
