"""What both index adapters store with each point, and how it is read back."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from app.domain.records import Hit, IndexedChunk, StoredChunk, Vector, id_key

DENSE = "dense"
# BM25 reads the same text the embedder reads (title, section path, chunk text).
SEARCH_TEXT = "search_text"
SIGNATURE = "sig"
# Payload that retrieval never needs back; signatures are fetched only for rerank candidates.
HEAVY_FIELDS = [SEARCH_TEXT, SIGNATURE]


def payload_of(item: IndexedChunk) -> dict[str, Any]:
    """What a point stores besides its vectors; the same on Edge and on a cluster, so exports
    and replay checks read the same fields."""
    chunk = item.chunk
    payload: dict[str, Any] = {
        "tenant": chunk.tenant,
        "doc_id": chunk.doc_id,
        "version": chunk.version,
        "event_id": chunk.event_id,
        "chunk_index": chunk.chunk_index,
        "title": chunk.title,
        "section": chunk.section,
        "text": chunk.text,
        "metadata": chunk.metadata,
        SEARCH_TEXT: chunk.embed_text,
    }
    if item.token_signature is not None:
        payload[SIGNATURE] = base64.b64encode(item.token_signature).decode("ascii")
    return payload


def fill_hits(hits: Sequence[Hit], payloads: Mapping[str, Mapping[str, Any]]) -> None:
    """Set each hit's document fields from its point's payload (by chunk id)."""
    for h in hits:
        payload = payloads.get(h.chunk_id, {})
        h.doc_id = str(payload.get("doc_id", ""))
        h.chunk_index = int(payload.get("chunk_index", 0))
        h.title = str(payload.get("title", ""))
        h.text = str(payload.get("text", ""))
        h.section = list(payload.get("section") or [])
        h.metadata = dict(payload.get("metadata") or {})


def stored_chunk(point_id: object, payload: Mapping[str, Any] | None) -> StoredChunk:
    """A point read back as the chunk it holds (its payload without the signature)."""
    payload = payload or {}
    return StoredChunk(
        chunk_id=str(point_id),
        version=str(payload.get("version", "")),
        event_id=str(payload.get("event_id") or ""),
        chunk_index=int(payload.get("chunk_index", 0)),
        title=str(payload.get("title", "")),
        section=list(payload.get("section") or []),
        text=str(payload.get("text", "")),
        embed_text=str(payload.get(SEARCH_TEXT, "")),
        metadata=dict(payload.get("metadata") or {}),
    )


def in_write_order(chunks: Iterable[StoredChunk]) -> list[StoredChunk]:
    """A document's chunks by the event that wrote them (oldest first), then by position:
    between a new version's write and the sweep of the old one both are there."""
    return sorted(chunks, key=lambda c: (id_key(c.event_id), c.chunk_index, c.chunk_id))


def dense_of(vectors: Any) -> Vector:
    """A point's dense vector from what a client returns: its named vectors, or the one."""
    dense = vectors[DENSE] if isinstance(vectors, dict) else vectors
    return np.asarray(dense if dense is not None else [], dtype=np.float32)


def signatures_of(records: Iterable[tuple[object, Mapping[str, Any] | None]]) -> dict[str, bytes]:
    """Token signatures from (point id, payload) pairs; points without one are left out."""
    out: dict[str, bytes] = {}
    for point_id, payload in records:
        encoded = (payload or {}).get(SIGNATURE)
        if encoded:
            out[str(point_id)] = base64.b64decode(encoded)
    return out


def doomed_points(
    records: Iterable[tuple[object, Mapping[str, Any] | None]],
    *,
    older_than: str | None,
    written_by: str | None,
) -> list[object]:
    """Which of a document's points (id, payload with "event_id") a delete removes: every
    one, those of events older than `older_than` (a point without an event counts as
    oldest), or those of `written_by`. Stream ids order as numbers, not as strings, so the
    choice is made here rather than by a filter on the index."""
    doomed = []
    limit = id_key(older_than) if older_than is not None else None
    for point_id, payload in records:
        written = str((payload or {}).get("event_id") or "")
        if written_by is not None:
            if written == written_by:
                doomed.append(point_id)
        elif limit is None or id_key(written) < limit:
            doomed.append(point_id)
    return doomed
