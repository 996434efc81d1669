"""Applies documents to the index: chunk, embed, write, then drop the previous version's chunks."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

import msgspec

from app.domain import Chunk, ChunkingParams, DocumentIn, IndexedChunk
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


def chunk_id(tenant: str, doc_id: str, index: int) -> str:
    """Deterministic point id: UUIDv5 of tenant, document id and chunk index."""
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{tenant}\x1f{doc_id}\x1f{index}"))


class Indexer:
    """Turns documents into indexed chunks; idempotent for a given (tenant, id, version)."""

    def __init__(self, embedder: Embedder, index: VectorIndex, *, write_batch: int = 256) -> None:
        self.embedder = embedder
        self.index = index
        self._count_tokens = embedder.token_counter()
        self._write_batch = write_batch

    def plan(
        self, tenant: str, doc: DocumentIn, version: str, chunking: ChunkingParams
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
                chunk_id=chunk_id(tenant, doc.id, i),
                tenant=tenant,
                doc_id=doc.id,
                version=version,
                chunk_index=i,
                title=doc.title,
                section=piece.section,
                text=piece.text,
                embed_text=piece.embed_text,
                metadata=doc.metadata,
            )
            for i, piece in enumerate(pieces)
        ]

    async def write(self, chunks: Sequence[Chunk]) -> None:
        """Embed and upsert chunks (of any number of documents), in write batches."""
        for start in range(0, len(chunks), self._write_batch):
            batch = chunks[start : start + self._write_batch]
            encoded = await self.embedder.embed_documents([c.embed_text for c in batch])
            signatures = encoded.token_signatures
            await self.index.upsert(
                [
                    IndexedChunk(
                        chunk=chunk,
                        vector=encoded.vectors[i],
                        token_signature=None if signatures is None else signatures[i],
                    )
                    for i, chunk in enumerate(batch)
                ]
            )

    async def replace(self, tenant: str, doc_id: str, version: str) -> None:
        """Drop chunks of every other version; call after the new version is written."""
        await self.index.delete_document(tenant, doc_id, keep_version=version)

    async def delete(self, tenant: str, doc_id: str) -> int:
        return await self.index.delete_document(tenant, doc_id)
