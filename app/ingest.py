"""The write side: validate documents, version them by content, and hand them to the index."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from app.domain import ChunkingParams, DocumentIn, DocumentState
from app.errors import InvalidRequest
from app.indexing import Indexer, document_version


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    doc_id: str
    version: str
    status: str  # "indexed" | "unchanged"
    chunks: int


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
    seen: dict[str, int] = {}
    for i, doc in enumerate(docs):
        if doc.id in seen:
            raise InvalidRequest(
                f"document id {doc.id!r} appears twice "
                f"(documents[{seen[doc.id]}] and documents[{i}])",
                field=f"documents[{i}].id",
            )
        seen[doc.id] = i
        if not doc.text.strip():
            raise InvalidRequest("text is empty or only whitespace", field=f"documents[{i}].text")


class DirectIngest:
    """Indexes documents within the request: chunk, embed and write before answering.

    The event-sourced write path (append to the document stream, project asynchronously)
    sits behind the same methods.
    """

    def __init__(self, indexer: Indexer, *, max_documents: int) -> None:
        self.indexer = indexer
        self.max_documents = max_documents

    async def ingest(
        self, tenant: str, docs: Sequence[DocumentIn], chunking: ChunkingParams
    ) -> list[Accepted]:
        check_batch(docs, chunking, self.max_documents)
        results: list[Accepted] = []
        todo = []
        for doc in docs:
            version = document_version(doc, chunking)
            current = await self.indexer.index.document(tenant, doc.id)
            if current is not None and current.version == version:
                results.append(
                    Accepted(
                        doc_id=doc.id, version=version, status="unchanged", chunks=current.chunks
                    )
                )
                continue
            chunks = self.indexer.plan(tenant, doc, version, chunking)
            todo.extend(chunks)
            results.append(
                Accepted(doc_id=doc.id, version=version, status="indexed", chunks=len(chunks))
            )
        await self.indexer.write(todo)
        for accepted in results:
            if accepted.status == "indexed":
                await self.indexer.replace(tenant, accepted.doc_id, accepted.version)
        return results

    async def delete(self, tenant: str, doc_id: str) -> int:
        return await self.indexer.delete(tenant, doc_id)

    async def status(self, tenant: str, doc_id: str) -> DocumentState | None:
        return await self.indexer.index.document(tenant, doc_id)
