"""Plans a document's chunks (ids, version, event) and drops the points of older events."""

from __future__ import annotations

import hashlib
import uuid

import msgspec

from app.domain.events import DocumentUpserted
from app.domain.records import Chunk, ChunkingParams, DocumentIn
from app.ports import Embedder, VectorIndex
from app.retrieval.chunking import chunk_document

# Fixed forever: point ids derive from it, so replays and redeliveries land on the same points.
_POINT_NAMESPACE = uuid.UUID("6f1c4c9e-2b1a-5d47-9a53-3f1f0b2d7c10")


def document_version(doc: DocumentIn, chunking: ChunkingParams) -> str:
    """Content hash of everything that shapes a document's chunks."""
    material = msgspec.json.encode(
        [doc.title, doc.text, doc.metadata, chunking.size, chunking.overlap]
    )
    return hashlib.sha256(material).hexdigest()[:24]


def chunk_id(tenant: str, doc_id: str, index: int, event_id: str = "") -> str:
    """Deterministic point id: UUIDv5 of tenant, document id, the event that wrote the chunk
    and chunk index, so two events never write the same point ("" is the scheme before
    points carried their event, kept so such points keep their ids)."""
    name = f"{tenant}\x1f{doc_id}\x1f{index}"
    if event_id:
        name = f"{tenant}\x1f{doc_id}\x1f{event_id}\x1f{index}"
    return str(uuid.uuid5(_POINT_NAMESPACE, name))


class Indexer:
    """Plans documents' chunks and drops points of one index; the chunks are embedded and
    written by app/services/projector/embedding.py. Idempotent for a (tenant, id, version)."""

    def __init__(self, embedder: Embedder, index: VectorIndex) -> None:
        self.embedder = embedder
        self.index = index
        self._count_tokens = embedder.token_counter()

    def plan(
        self,
        tenant: str,
        doc: DocumentIn,
        version: str,
        chunking: ChunkingParams,
        event_id: str = "",
    ) -> list[Chunk]:
        pieces = chunk_document(
            doc.text,
            title=doc.title,
            # A chunk larger than the model's window would be embedded without its tail.
            size=min(chunking.size, self.embedder.max_text_tokens),
            overlap=chunking.overlap,
            count_tokens=self._count_tokens,
        )
        return [
            Chunk(
                chunk_id=chunk_id(tenant, doc.id, i, event_id),
                tenant=tenant,
                doc_id=doc.id,
                version=version,
                event_id=event_id,
                chunk_index=i,
                title=doc.title,
                section=piece.section,
                text=piece.text,
                embed_text=piece.embed_text,
                metadata=doc.metadata,
            )
            for i, piece in enumerate(pieces)
        ]

    def plan_event(self, event: DocumentUpserted, event_id: str = "") -> list[Chunk]:
        """The chunks an upsert event's application writes (`event_id`: its entry)."""
        doc = DocumentIn(
            id=event.doc_id, text=event.text, title=event.title, metadata=event.metadata
        )
        chunking = ChunkingParams(size=event.chunk_size, overlap=event.chunk_overlap)
        return self.plan(event.tenant, doc, event.version, chunking, event_id)

    async def sweep(self, tenant: str, doc_id: str, *, before: str) -> int:
        """Drop the document's points written by events older than `before` (and those
        written before points carried their event); call once `before`'s record is stored."""
        return await self.index.delete_document(tenant, doc_id, older_than=before)

    async def drop_written_by(self, tenant: str, doc_id: str, event_id: str) -> int:
        """Drop the points one event wrote: a loser of a race, or one given up on."""
        return await self.index.delete_document(tenant, doc_id, written_by=event_id)
