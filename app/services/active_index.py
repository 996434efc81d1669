"""The VectorIndex that always means the catalog's active generation, whichever that is now."""

from __future__ import annotations

from collections.abc import Sequence

from app.domain.records import (
    DocumentState,
    Hit,
    IndexedChunk,
    IndexQuery,
    IndexStats,
    StoredChunk,
    Vector,
)
from app.ports import IndexCatalog


class ActiveIndex:
    """Resolves the active generation per call, so the pipeline, the projector and the write
    side keep one reference across a replay's swap. A search spans several calls (retrieve,
    hydrate, vectors); one that straddles a swap continues on the new generation, which
    holds the same point ids for everything the old one held."""

    def __init__(self, catalog: IndexCatalog) -> None:
        self.catalog = catalog

    async def upsert(self, chunks: Sequence[IndexedChunk]) -> None:
        await self.catalog.current().upsert(chunks)

    async def delete_document(
        self,
        tenant: str,
        doc_id: str,
        *,
        older_than: str | None = None,
        written_by: str | None = None,
    ) -> int:
        return await self.catalog.current().delete_document(
            tenant, doc_id, older_than=older_than, written_by=written_by
        )

    async def document(self, tenant: str, doc_id: str) -> DocumentState | None:
        return await self.catalog.current().document(tenant, doc_id)

    async def chunks(self, tenant: str, doc_id: str) -> list[StoredChunk]:
        return await self.catalog.current().chunks(tenant, doc_id)

    async def retrieve(self, query: IndexQuery) -> list[Hit]:
        return await self.catalog.current().retrieve(query)

    async def hydrate(self, hits: Sequence[Hit]) -> None:
        await self.catalog.current().hydrate(hits)

    async def vectors(self, chunk_ids: Sequence[str]) -> dict[str, Vector]:
        return await self.catalog.current().vectors(chunk_ids)

    async def token_signatures(self, chunk_ids: Sequence[str]) -> dict[str, bytes]:
        return await self.catalog.current().token_signatures(chunk_ids)

    async def stats(self, tenant: str | None = None) -> IndexStats:
        return await self.catalog.current().stats(tenant)

    async def ready(self) -> bool:
        return await self.catalog.current().ready()

    def close(self) -> None:
        self.catalog.close()
