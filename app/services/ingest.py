"""The write side: validate documents, version them by content, append their events to the log.

A document is acknowledged once its event is in the document stream; the projector
(app/services/projector.py) indexes it from there. Callers that must read their own writes can wait,
for a bounded time, until the projector has applied the events they caused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import msgspec

from app.domain.doc_status import DocView, Outcome, Written, resolve
from app.domain.events import DocumentDeleted, DocumentUpserted, Streams
from app.domain.records import ChunkingParams, DocumentIn, id_key
from app.errors import DependencyUnavailable, InvalidRequest, NotFound
from app.ports import DocStatusStore, EventLog, VectorIndex
from app.services.indexing import document_version

log = logging.getLogger(__name__)

# Polling the applied records while a request waits: quick at first, since a small batch is
# applied in tens of milliseconds, then no more than a few reads a second per request.
_FIRST_POLL_SECONDS = 0.01
_MAX_POLL_SECONDS = 0.25


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one document of a request."""

    doc_id: str
    version: str | None  # None for a delete
    # The event that carries this change; for "unchanged", the one that indexed the version.
    # None only for documents indexed before the event log existed.
    event_id: str | None
    # pending: in the stream, not yet applied; indexed / deleted: applied; unchanged: this
    # version was indexed already, nothing appended; failed: dead-lettered (see error);
    # superseded: a later change to the same document was applied instead, or came later in
    # the same request (then nothing was appended for this one, and event_id is None).
    status: Outcome
    chunks: int = 0
    error: str | None = None


def check_batch(docs: Sequence[DocumentIn], chunking: ChunkingParams, max_documents: int) -> None:
    """Reject what no later step could make sense of, naming the offending field."""
    if len(docs) > max_documents:
        raise InvalidRequest(
            f"at most {max_documents} documents per request, got {len(docs)}", field="documents"
        )
    if chunking.overlap >= chunking.size:
        raise InvalidRequest(
            f"chunk_overlap ({chunking.overlap}) must be smaller than chunk_size ({chunking.size})",
            field="chunk_overlap",
        )
    for i, doc in enumerate(docs):
        if not doc.text.strip():
            raise InvalidRequest("text is empty or only whitespace", field=f"documents[{i}].text")


class LoggedIngest:
    """Appends DocumentUpserted / DocumentDeleted to the document stream and reports status.

    `index_id` is the index whose applied records answer status questions (its model id).
    `index`, when given, answers for documents indexed before the event log existed.
    """

    def __init__(
        self,
        log: EventLog,
        status: DocStatusStore,
        *,
        streams: Streams,
        index_id: str,
        max_documents: int,
        wait_seconds: float,
        index: VectorIndex | None = None,
    ) -> None:
        self.log = log
        self.status_store = status
        self.streams = streams
        self.index_id = index_id
        self.max_documents = max_documents
        self.wait_seconds = wait_seconds
        self.index = index

    async def ingest(
        self,
        tenant: str,
        docs: Sequence[DocumentIn],
        chunking: ChunkingParams,
        *,
        traceparent: str | None = None,
        wait: bool = False,
    ) -> list[Accepted]:
        check_batch(docs, chunking, self.max_documents)
        versions = [document_version(doc, chunking) for doc in docs]
        records = await self.status_store.both(self.index_id, tenant, [d.id for d in docs])
        # The same id twice in one request: the last one wins, as if each had been sent in
        # its own request in order, except that the ones it replaces cost nothing.
        last = {doc.id: i for i, doc in enumerate(docs)}
        results: list[Accepted | None] = []
        events: list[DocumentUpserted] = []
        now = time.time()
        for i, (doc, version, (written, applied)) in enumerate(
            zip(docs, versions, records, strict=True)
        ):
            if last[doc.id] != i:
                results.append(
                    Accepted(doc_id=doc.id, version=version, event_id=None, status="superseded")
                )
                continue
            view = resolve(doc.id, written, applied)
            if (
                view is not None
                and view.version == version
                and view.status
                in (
                    "indexed",
                    "pending",
                )
            ):
                # This version is indexed or on its way: appending it again would only
                # repeat the work. (A failed or deleted one is appended anew.)
                results.append(
                    Accepted(
                        doc_id=doc.id,
                        version=version,
                        event_id=view.event_id,
                        status="unchanged" if view.status == "indexed" else "pending",
                        chunks=view.chunks,
                    )
                )
                continue
            results.append(None)
            events.append(
                DocumentUpserted(
                    tenant=tenant,
                    doc_id=doc.id,
                    version=version,
                    title=doc.title,
                    text=doc.text,
                    metadata=doc.metadata,
                    chunk_size=chunking.size,
                    chunk_overlap=chunking.overlap,
                    at=now,
                    traceparent=traceparent,
                )
            )
        # All of the request's events are appended, or none (DependencyUnavailable -> 503).
        ids = iter(await self.log.append_many(self.streams.documents, events))
        written_now: dict[str, Written] = {}
        accepted: list[Accepted] = []
        for result, doc, version in zip(results, docs, versions, strict=True):
            if result is None:
                event_id = next(ids)
                written_now[doc.id] = Written(
                    event_id=event_id, op="upsert", version=version, at=now
                )
                result = Accepted(
                    doc_id=doc.id, version=version, event_id=event_id, status="pending"
                )
            accepted.append(result)
        await self._record_written(tenant, written_now)
        return await self._wait(tenant, accepted) if wait else accepted

    async def delete(
        self, tenant: str, doc_id: str, *, traceparent: str | None = None, wait: bool = False
    ) -> Accepted:
        """Append a DocumentDeleted; NotFound if the document is unknown or already deleted
        (or its deletion is pending)."""
        view = await self.status(tenant, doc_id)
        if (
            view is None
            or view.status == "deleted"
            or (view.status == "pending" and view.version is None)
        ):
            raise NotFound(f"document {doc_id!r} is not indexed")
        now = time.time()
        event_id = await self.log.append(
            self.streams.documents,
            DocumentDeleted(tenant=tenant, doc_id=doc_id, at=now, traceparent=traceparent),
        )
        await self._record_written(
            tenant, {doc_id: Written(event_id=event_id, op="delete", version=None, at=now)}
        )
        result = Accepted(doc_id=doc_id, version=None, event_id=event_id, status="pending")
        return (await self._wait(tenant, [result]))[0] if wait else result

    async def status(self, tenant: str, doc_id: str) -> DocView | None:
        ((written, applied),) = await self.status_store.both(self.index_id, tenant, [doc_id])
        view = resolve(doc_id, written, applied)
        if view is None and self.index is not None:
            state = await self.index.document(tenant, doc_id)
            if state is not None:
                view = DocView(
                    doc_id=doc_id,
                    status="indexed",
                    version=state.version,
                    event_id=None,
                    chunks=state.chunks,
                )
        return view

    async def _record_written(self, tenant: str, records: dict[str, Written]) -> None:
        try:
            await self.status_store.record_written(tenant, records)
        except DependencyUnavailable as exc:
            # The events are in the stream, so the request succeeded; until the projector
            # records them, status shows the document's previous state instead of pending.
            log.warning("appended %d events but could not mark them pending: %s", len(records), exc)

    async def _wait(self, tenant: str, accepted: list[Accepted]) -> list[Accepted]:
        """Each pending result once the projector applied its event (or a later one), or
        as it was when RAG_INGEST_WAIT_SECONDS ran out."""
        targets = {
            a.doc_id: (a, a.event_id)
            for a in accepted
            if a.status == "pending" and a.event_id is not None
        }
        if not targets:
            return accepted
        deadline = time.monotonic() + self.wait_seconds
        delay = _FIRST_POLL_SECONDS
        done: dict[str, Accepted] = {}
        while True:
            waiting = [doc_id for doc_id in targets if doc_id not in done]
            try:
                found = await self.status_store.applied(self.index_id, tenant, waiting)
            except DependencyUnavailable as exc:
                # Acknowledged is acknowledged: answer "pending" rather than fail the request.
                log.warning("stopped waiting for the projector: %s", exc)
                break
            for doc_id, applied in zip(waiting, found, strict=True):
                target, event_id = targets[doc_id]
                if applied is None or id_key(applied.event_id) < id_key(event_id):
                    continue
                if applied.event_id == event_id:
                    done[doc_id] = msgspec.structs.replace(
                        target, status=applied.status, chunks=applied.chunks, error=applied.error
                    )
                else:
                    done[doc_id] = msgspec.structs.replace(target, status="superseded")
            remaining = deadline - time.monotonic()
            if len(done) == len(targets) or remaining <= 0:
                break
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 1.5, _MAX_POLL_SECONDS)
        return [done.get(a.doc_id, a) if a.status == "pending" else a for a in accepted]
