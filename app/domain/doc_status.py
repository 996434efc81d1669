"""Per-document status: what the write side accepted last and what the projector applied last.

Two records per document, each keyed by (tenant, doc id) and each only ever replaced by one
for a later stream entry:

- `Written`, set by the write side after it appended an event: the newest accepted change.
- `Applied`, set by the projector after the index write returned: the newest event the index
  reflects (indexed or deleted), or the one it gave up on (failed, dead-lettered).

A document is pending while its written record is newer than its applied one. The two are
kept apart, rather than as one record both sides update, so neither side ever reads and
rewrites the other's state, and a lost write on one side only delays, never corrupts, what a
reader sees: the applied record alone still tells the truth about the index.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from app.domain.records import id_key

Status = Literal["pending", "indexed", "deleted", "failed"]
# What became of one document of a write request. pending: accepted (its event is in the
# document stream), not yet indexed; indexed: the projector applied it; unchanged: this version
# was indexed already, nothing was appended; failed: the projector gave up on it (see `error`);
# superseded: a later change to the same document was applied first; deleted: a delete was
# applied.
Outcome = Literal["pending", "indexed", "unchanged", "failed", "superseded", "deleted"]


def is_newer(entry_id: str, than: str) -> bool:
    return id_key(entry_id) > id_key(than)


class Written(msgspec.Struct, frozen=True, kw_only=True):
    """The newest change to a document the write side appended to the document stream."""

    event_id: str
    op: Literal["upsert", "delete"]
    version: str | None  # None for a delete
    at: float


class Applied(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The newest document event the projector finished with, and how."""

    event_id: str
    status: Literal["indexed", "deleted", "failed"]
    version: str | None = None  # the event's version; None for a delete
    chunks: int = 0  # points the index holds for the document (indexed only)
    error: str | None = None  # why it failed (failed only)
    # Indexed: the event whose points hold this version (event_id itself, or an earlier one
    # when this event found its version already indexed). None on records written before
    # points carried their event, whose points the projector rewrites rather than adopts.
    points: str | None = None
    at: float


class DocView(msgspec.Struct, frozen=True, kw_only=True):
    """A document's status as clients see it."""

    doc_id: str
    status: Status
    version: str | None  # pending: the version waiting (None when a delete waits)
    event_id: str | None  # None only for documents indexed before the event log existed
    chunks: int = 0
    error: str | None = None


def resolve(doc_id: str, written: Written | None, applied: Applied | None) -> DocView | None:
    """The status of one document from its two records; None if it was never accepted."""
    if written is not None and (applied is None or is_newer(written.event_id, applied.event_id)):
        return DocView(
            doc_id=doc_id, status="pending", version=written.version, event_id=written.event_id
        )
    if applied is None:
        return None
    return DocView(
        doc_id=doc_id,
        status=applied.status,
        version=applied.version,
        event_id=applied.event_id,
        chunks=applied.chunks,
        error=applied.error,
    )
