"""The document stream read as per-document state: each document's newest entry, and the
written record that entry stands for."""

from __future__ import annotations

from collections.abc import Iterable

from app.domain.doc_status import Written
from app.domain.events import DocumentDeleted, DocumentUpserted, Entry

DocKey = tuple[str, str]  # (tenant, doc id)


def newest_per_document(entries: Iterable[Entry]) -> dict[DocKey, Entry]:
    """Each document's last entry among `entries`, read in stream order. Entries that are no
    document event (undecodable ones included) are left out: they change no document.

    Folding a stream page by page is `newest.update(newest_per_document(page))`: a later
    entry wins, so a deleted document stays deleted and an older version never overwrites
    a newer one (replay rebuilds from this; an export keeps only these entries)."""
    newest: dict[DocKey, Entry] = {}
    for entry in entries:
        if isinstance(entry.event, DocumentUpserted | DocumentDeleted):
            newest[(entry.event.tenant, entry.event.doc_id)] = entry
    return newest


def written_record(entry_id: str, event: DocumentUpserted | DocumentDeleted) -> Written:
    """The written record the write side (app/services/ingest.py) stores once it has
    appended `event` as `entry_id`: what a restored log needs for document status to read
    `pending` until the projector has applied it."""
    if isinstance(event, DocumentUpserted):
        return Written(event_id=entry_id, op="upsert", version=event.version, at=event.at)
    return Written(event_id=entry_id, op="delete", version=None, at=event.at)
