"""Reading documents back: one with its content and chunks, or a tenant's, a page at a time.

A document's title, metadata and text are those of its newest accepted version, read from
that version's event in the document stream: the status record names the entry, so it is
one lookup by id however long the stream is. Its chunks are what the index holds for it.

The list walks the tenant's status records with HSCAN: first the written records (every
document accepted through the log has one), then the applied records that have none (a
write the status store missed). Its cursor is opaque to clients; see `ListCursor`.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from app.domain.doc_status import Applied, DocView, Status, Written, resolve
from app.domain.events import DocumentUpserted, Streams
from app.domain.records import StoredChunk
from app.errors import InvalidRequest
from app.ports import DocStatusStore, EventLog, VectorIndex
from app.services.ingest import LoggedIngest

# A list cursor: the phase (w: written records, a: applied ones), the HSCAN cursor, and,
# when a page ended inside one HSCAN step, a digest of that step's doc ids up to and
# including the last one it returned, and that id (hex of its UTF-8). Every string of this
# form is a valid cursor, so a client cannot make one up that fails.
CURSOR_PATTERN = r"^[wa][0-9]{1,19}(\.[0-9a-f]{16}\.([0-9a-f]{2}){1,2048})?$"
_CURSOR = re.compile(CURSOR_PATTERN)
# HSCAN steps one page request may take: a sparse status filter ends a page short (with a
# cursor) rather than read a whole tenant in one request.
_MAX_EXAMINED = 2000
_FILTERED_STEP = 250


class DocumentRead(msgspec.Struct, kw_only=True):
    """A document as GET /api/v1/documents/{id} shows it."""

    view: DocView
    title: str | None = None  # of the newest accepted version; None once deleted
    metadata: dict[str, Any] | None = None
    accepted_at: float | None = None  # when that version was accepted (epoch seconds)
    text: str | None = None  # asked for, and the version's event is still in the stream
    chunks: list[StoredChunk] | None = None  # asked for


class DocumentPage(msgspec.Struct, kw_only=True):
    documents: list[DocView]
    next: str | None  # None: the scan is complete


class ListCursor(msgspec.Struct, frozen=True, kw_only=True):
    """Where a list goes on: phase, HSCAN cursor, and how far into that step it got.

    A page may end inside an HSCAN step. The next request runs the same step again (same
    cursor, same COUNT) and skips the ids up to `after` only if they are exactly those it
    met before (same digest); when the step changed (documents added or removed, the hash
    resized, another `limit`) it starts that step over instead. So no document present for
    the whole scan is skipped, and one may come twice, as with HSCAN itself.
    """

    phase: str = "w"
    scan: int = 0
    digest: str | None = None
    after: bytes | None = None

    @classmethod
    def parse(cls, text: str | None) -> ListCursor:
        if text is None:
            return cls()
        if not _CURSOR.match(text):
            raise InvalidRequest(
                "not a cursor: pass back the `next` of the previous page as it is", field="cursor"
            )
        head, _, rest = text.partition(".")
        digest, _, after = rest.partition(".")
        return cls(
            phase=head[0],
            scan=int(head[1:]),
            digest=digest or None,
            after=bytes.fromhex(after) if after else None,
        )

    def text(self) -> str:
        head = f"{self.phase}{self.scan}"
        if self.after is None:
            return head
        return f"{head}.{self.digest}.{self.after.hex()}"


class Documents:
    """Reads documents back for clients: status, content, chunks, and lists of them."""

    def __init__(
        self,
        ingest: LoggedIngest,
        log: EventLog,
        status: DocStatusStore,
        index: VectorIndex,
        *,
        streams: Streams,
        index_id: str,
    ) -> None:
        self.ingest = ingest
        self.log = log
        self.status = status
        self.index = index
        self.streams = streams
        self.index_id = index_id

    async def read(
        self, tenant: str, doc_id: str, *, text: bool = False, chunks: bool = False
    ) -> DocumentRead | None:
        """The document's status, its newest version's title and metadata, and, when asked,
        its text and its chunks; None if it was never accepted."""
        view = await self.ingest.status(tenant, doc_id)
        if view is None:
            return None
        event, stored = await asyncio.gather(
            self._newest_upsert(tenant, view),
            self.index.chunks(tenant, doc_id) if chunks or view.event_id is None else _none(),
        )
        read = DocumentRead(view=view, chunks=stored if chunks else None)
        if event is not None:
            read.title, read.metadata, read.accepted_at = event.title, event.metadata, event.at
            read.text = event.text if text else None
        elif view.status == "indexed" and stored:
            # Indexed before the log existed: only the index knows its title and metadata.
            first = next((c for c in stored if c.version == view.version), stored[0])
            read.title, read.metadata = first.title, first.metadata
        return read

    async def _newest_upsert(self, tenant: str, view: DocView) -> DocumentUpserted | None:
        """The event of the version `view` reports, unless that is a delete."""
        if view.event_id is None or view.status == "deleted" or view.version is None:
            return None
        entry = await self.log.get(self.streams.documents, view.event_id)
        event = entry.event if entry is not None else None
        if (
            isinstance(event, DocumentUpserted)
            and event.tenant == tenant
            and event.doc_id == view.doc_id
        ):
            return event
        return None  # erased, or not the entry expected: show no content rather than another's

    async def page(
        self, tenant: str, *, status: Status | None, limit: int, cursor: str | None
    ) -> DocumentPage:
        """Up to `limit` documents (with `status`, if given) from where `cursor` left off."""
        at = ListCursor.parse(cursor)
        found: list[DocView] = []
        examined = 0
        # The same for every step of every page (of the same limit), so that a step a page
        # ended inside is the same step when the next page runs it again.
        step = limit if status is None else max(limit, _FILTERED_STEP)
        while True:
            next_scan, views = await self._step(tenant, at.phase, at.scan, step)
            ids = sorted(views, key=_utf8)
            start = 0
            if at.after is not None:
                seen = [d for d in ids if _utf8(d) <= at.after]
                if _digest(seen) == at.digest:
                    start = len(seen)
            for n in range(start, len(ids)):
                view = views[ids[n]]
                if view is None or (status is not None and view.status != status):
                    continue
                found.append(view)
                if len(found) == limit and n + 1 < len(ids):
                    last = _utf8(ids[n])
                    inside = ListCursor(
                        phase=at.phase, scan=at.scan, digest=_digest(ids[: n + 1]), after=last
                    )
                    return DocumentPage(documents=found, next=inside.text())
            examined += len(views)
            if next_scan != 0:
                at = ListCursor(phase=at.phase, scan=next_scan)
            elif at.phase == "w":
                at = ListCursor(phase="a", scan=0)
            else:
                return DocumentPage(documents=found, next=None)
            if len(found) == limit or examined >= _MAX_EXAMINED:
                return DocumentPage(documents=found, next=at.text())

    async def _step(
        self, tenant: str, phase: str, cursor: int, count: int
    ) -> tuple[int, dict[str, DocView | None]]:
        """One HSCAN step of a phase: each document it met, as listed (None: not listed in
        this phase, or no status)."""
        if phase == "w":
            next_scan, written = await self.status.scan_written(tenant, cursor=cursor, count=count)
            ids = list(written)
            applied = await self.status.applied(self.index_id, tenant, ids)
            return next_scan, {
                d: resolve(d, written[d], a) for d, a in zip(ids, applied, strict=True)
            }
        next_scan, found = await self.status.scan_applied(
            self.index_id, tenant, cursor=cursor, count=count
        )
        ids = list(found)
        writes = await self.status.written(tenant, ids)
        return next_scan, {
            d: _applied_only(d, w, found[d]) for d, w in zip(ids, writes, strict=True)
        }


def _applied_only(doc_id: str, written: Written | None, applied: Applied | None) -> DocView | None:
    # A document with a written record was listed in the first phase.
    return resolve(doc_id, None, applied) if written is None else None


def _utf8(doc_id: str) -> bytes:
    return doc_id.encode("utf-8", "surrogatepass")


def _digest(ids: Sequence[str]) -> str:
    return hashlib.blake2b(b"\0".join(_utf8(d) for d in ids), digest_size=8).hexdigest()


async def _none() -> list[StoredChunk]:
    return []
