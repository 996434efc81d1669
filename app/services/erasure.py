"""Erasure: a document's text and metadata removed from everywhere the service stored them.

A delete only appends a DocumentDeleted: every earlier version stays in the document stream
(the source of truth), and the index's files keep deleted points' payloads until segments are
rebuilt. Erasure (GDPR Art. 17 and its equivalents) goes further, in phases an `Erasure`
record reports:

1. requested: recorded (`{prefix}erasures`), by any process.
2. deleting: the process that projects appends a DocumentDeleted (unless the document is
   deleted already) and waits until the projector applied it: the document has left search.
3. scrubbing: every stream is rewritten without it (app/adapters/redis/rewrite.py): all of
   its events up to that delete (the delete itself, which holds no text, stays until
   compaction drops it), dead letters of its events, feedback on it, and its results in
   retrieval records; its chunks' cached embeddings are deleted; the Redis server is asked to
   rewrite its append-only file.
4. purging: a replay builds the index anew from the scrubbed stream and drops the old
   generation, files and write-ahead log included (deleted points' bytes stay in segments
   until then).
5. complete, with the time.

Every step can be repeated, so a crash at any point only means the next round (or the next
process) does it again. Requests that arrive together are done together: one rewrite per
stream and one replay for all of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Literal

import msgspec

from app.domain.doc_status import Written, resolve
from app.domain.events import (
    DocumentDeleted,
    DocumentUpserted,
    Entry,
    EventDeadLettered,
    FeedbackGiven,
    RetrievalRecorded,
    Streams,
    decode_event,
    encode_event,
)
from app.domain.records import Chunk, id_key
from app.errors import EventDecodeError, RagError
from app.ports import (
    Decision,
    DocStatusStore,
    EmbeddingCache,
    ErasureRecords,
    EventLog,
    LogRewriter,
)
from app.services.indexing import Indexer
from app.services.jobs import Jobs
from app.services.replay import ReplayProgress

log = logging.getLogger(__name__)

Phase = Literal["requested", "deleting", "scrubbing", "purging", "complete"]
# Greater than every stream id: a rewrite applies its choice to every entry.
_EVERY_ID = f"{2**64 - 1}-{2**64 - 1}"


class Erasure(msgspec.Struct, kw_only=True):
    """One erasure request and how far it got (see the module doc for the phases)."""

    erasure_id: str
    tenant: str
    doc_id: str
    phase: Phase = "requested"
    requested_at: float
    updated_at: float
    delete_event: str | None = None  # the delete it waited for (None: never ingested)
    events_removed: int = 0  # document events removed from the document stream
    cached_embeddings_removed: int = 0
    dead_letters_removed: int = 0
    feedback_removed: int = 0
    retrievals_scrubbed: int = 0  # retrieval records that lost its results
    redis_persistence: str | None = None  # what the append-only file rewrite did
    index_generation: str | None = None  # the generation built without it
    completed_at: float | None = None
    error: str | None = None  # the last failure; the next round tries again

    @classmethod
    def new(cls, tenant: str, doc_id: str, *, delete_event: str | None = None) -> Erasure:
        """A request; `delete_event`: the delete already appended for it (the API deletes at
        once, so the document leaves search without waiting for a round)."""
        now = time.time()
        return cls(
            erasure_id=uuid.uuid4().hex,
            tenant=tenant,
            doc_id=doc_id,
            phase="requested" if delete_event is None else "deleting",
            requested_at=now,
            updated_at=now,
            delete_event=delete_event,
        )


class Eraser:
    """Records erasure requests (any process) and carries them out (the process that
    projects, whose projector applies the deletes and whose replays purge the index)."""

    def __init__(
        self,
        *,
        records: ErasureRecords,
        event_log: EventLog,
        rewriter: LogRewriter,
        status: DocStatusStore,
        cache: EmbeddingCache,
        planner: Indexer,
        index_id: str,
        streams: Streams,
        replays: Jobs[ReplayProgress] | None,
        poll_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.records = records
        self.event_log = event_log
        self.rewriter = rewriter
        self.status = status
        self.cache = cache
        self.planner = planner
        self.index_id = index_id
        self.streams = streams
        self.replays = replays
        self.poll_seconds = poll_seconds
        self.clock = clock

    async def request(
        self, tenant: str, doc_id: str, *, delete_event: str | None = None
    ) -> Erasure:
        """Record an erasure (see Erasure.new)."""
        erasure = Erasure.new(tenant, doc_id, delete_event=delete_event)
        await self.records.save(erasure)
        return erasure

    async def get(self, erasure_id: str) -> Erasure | None:
        return await self.records.load(erasure_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Carry out open requests every `poll_seconds` until `stop` is set."""
        while True:
            try:
                await self.step()
            except RagError as exc:  # an outage, a compaction holding the stream: next round
                log.warning("erasure round stopped: %s", exc)
            try:
                await asyncio.wait_for(stop.wait(), self.poll_seconds)
                return
            except TimeoutError:
                pass

    async def step(self) -> list[Erasure]:
        """One round over the open requests; returns them as they are after it."""
        open_ones = [e for e in await self.records.open_ones() if e.phase != "complete"]
        for erasure in open_ones:
            if erasure.phase == "requested":
                await self._delete(erasure)
        deleted = [e for e in open_ones if e.phase == "deleting" and await self._applied(e)]
        if deleted:
            await self._scrub(deleted)
        purging = [e for e in open_ones if e.phase in ("scrubbing", "purging")]
        if purging:
            await self._purge(purging)
        return open_ones

    async def _delete(self, erasure: Erasure) -> None:
        ((written, applied),) = await self.status.both(
            self.index_id, erasure.tenant, [erasure.doc_id]
        )
        view = resolve(erasure.doc_id, written, applied)
        if view is None:
            erasure.delete_event = None
        elif view.status == "deleted" or (view.status == "pending" and view.version is None):
            erasure.delete_event = view.event_id
        else:
            now = self.clock()
            event_id = await self.event_log.append(
                self.streams.documents,
                DocumentDeleted(
                    tenant=erasure.tenant, doc_id=erasure.doc_id, at=now, traceparent=None
                ),
            )
            await self.status.record_written(
                erasure.tenant,
                {erasure.doc_id: Written(event_id=event_id, op="delete", version=None, at=now)},
            )
            erasure.delete_event = event_id
        await self._save(erasure, phase="deleting")

    async def _applied(self, erasure: Erasure) -> bool:
        if erasure.delete_event is None:
            return True
        (applied,) = await self.status.applied(self.index_id, erasure.tenant, [erasure.doc_id])
        return applied is not None and id_key(applied.event_id) >= id_key(erasure.delete_event)

    async def _scrub(self, erasures: list[Erasure]) -> None:
        targets = {(e.tenant, e.doc_id): e for e in erasures}

        def erased(event: DocumentUpserted | DocumentDeleted, entry_id: str) -> Erasure | None:
            """The erasure this document event falls under, if any."""
            erasure = targets.get((event.tenant, event.doc_id))
            if erasure is None or entry_id == erasure.delete_event:
                return None  # the delete itself holds no text; compaction drops it later
            if erasure.delete_event is not None and id_key(entry_id) > id_key(erasure.delete_event):
                return None  # a new ingest of the same id after the erasure: not erased
            return erasure

        # Read first, rewrite last: until the document stream is rewritten, a round that
        # crashed finds everything it needs (chunk ids, cached texts) again.
        chunk_ids: set[str] = set()
        texts: dict[str, set[str]] = {}
        last: str | None = None
        while True:
            page = await self.event_log.range(
                self.streams.documents, start="-" if last is None else f"({last}", count=1000
            )
            for entry in page:
                event = entry.event
                if isinstance(event, DocumentUpserted) and erased(event, entry.id) is not None:
                    for chunk in self._planned(event):
                        chunk_ids.add(chunk.chunk_id)
                        texts.setdefault(event.tenant, set()).add(chunk.embed_text)
            if len(page) < 1000:
                break
            last = page[-1].id

        def documents(entry: Entry) -> Decision:
            event = entry.event
            if not isinstance(event, DocumentUpserted | DocumentDeleted):
                return "keep"
            erasure = erased(event, entry.id)
            if erasure is None:
                return "keep"
            erasure.events_removed += 1
            return "drop"

        def dead_letters(entry: Entry) -> Decision:
            event = entry.event
            if not isinstance(event, EventDeadLettered):
                return "keep"
            try:
                source = decode_event(event.raw)
            except EventDecodeError:
                return "keep"
            if not isinstance(source, DocumentUpserted | DocumentDeleted):
                return "keep"
            erasure = targets.get((source.tenant, source.doc_id))
            if erasure is None:
                return "keep"
            erasure.dead_letters_removed += 1
            return "drop"

        def feedback(entry: Entry) -> Decision:
            event = entry.event
            if not isinstance(event, FeedbackGiven):
                return "keep"
            erasure = targets.get((event.tenant, event.doc_id or ""))
            if erasure is None and event.chunk_id in chunk_ids:
                erasure = next((e for e in erasures if e.tenant == event.tenant), None)
            if erasure is None:
                return "keep"
            erasure.feedback_removed += 1
            return "drop"

        def retrievals(entry: Entry) -> Decision:
            event = entry.event
            if not isinstance(event, RetrievalRecorded):
                return "keep"
            hit = [r for r in event.results if (event.tenant, r.doc_id) in targets]
            if not hit:
                return "keep"
            for r in hit:
                targets[(event.tenant, r.doc_id)].retrievals_scrubbed += 1
            kept = [r for r in event.results if r not in hit]
            return encode_event(msgspec.structs.replace(event, results=kept))

        for stream, choose in (
            (self.streams.dead_letter, dead_letters),
            (self.streams.feedback, feedback),
            (self.streams.retrievals, retrievals),
        ):
            if await self.event_log.length(stream):
                await self.rewriter.rewrite(stream, choose, upto=_EVERY_ID)
        for tenant, tenant_texts in texts.items():
            removed = await self.cache.forget_many(
                tenant, self.planner.embedder.model_id, sorted(tenant_texts)
            )
            for erasure in erasures:
                if erasure.tenant == tenant:
                    erasure.cached_embeddings_removed += removed
        if await self.event_log.length(self.streams.documents):
            await self.rewriter.rewrite(self.streams.documents, documents, upto=_EVERY_ID)
        persistence = await self.rewriter.rewrite_persistence()
        for erasure in erasures:
            erasure.redis_persistence = persistence
            await self._save(erasure, phase="purging")
        log.info("erasure: %d documents scrubbed from the streams", len(erasures))

    def _planned(self, event: DocumentUpserted) -> list[Chunk]:
        try:
            return self.planner.plan_event(event)
        except Exception:  # it never chunked, so nothing of it was cached or indexed
            return []

    async def _purge(self, erasures: list[Erasure]) -> None:
        if self.replays is None:
            return
        # A replay running now may have read the stream before the scrub: wait it out.
        if self.replays.running:
            await self.replays.wait()
        job = self.replays.start()
        progress = await self.replays.wait()
        if progress is None or progress.phase != "done":
            raise RagError(f"the index purge (replay {job.job_id}) did not finish")
        now = self.clock()
        for erasure in erasures:
            erasure.index_generation = progress.generation
            erasure.completed_at = now
            await self._save(erasure, phase="complete")
        log.info("erasure: %d documents purged from the index", len(erasures))

    async def _save(self, erasure: Erasure, *, phase: Phase) -> None:
        erasure.phase = phase
        erasure.updated_at = self.clock()
        erasure.error = None
        await self.records.save(erasure)
