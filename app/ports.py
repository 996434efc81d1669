"""Protocols the services depend on; adapters implement them, tests hold adapters to them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from app.domain import (
    DocumentState,
    Encoded,
    EncodedQuery,
    Hit,
    IndexedChunk,
    IndexQuery,
    IndexStats,
    Vector,
)


class Embedder(Protocol):
    """Turns texts into L2-normalised vectors; the model id is part of the index identity."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def has_token_vectors(self) -> bool: ...

    @property
    def max_text_tokens(self) -> int:
        """Tokens of text the model reads per input, special tokens excluded."""
        ...

    def token_counter(self) -> Callable[[str], int]:
        """A pure function giving a text's length in this model's tokens (no specials)."""
        ...

    async def embed_documents(self, texts: Sequence[str]) -> Encoded: ...

    async def embed_query(self, text: str) -> EncodedQuery: ...

    def close(self) -> None: ...


class VectorIndex(Protocol):
    """Chunk storage with dense (cosine) and BM25 retrieval, filtered by tenant."""

    async def upsert(self, chunks: Sequence[IndexedChunk]) -> None:
        """Write chunks; durable when this returns."""
        ...

    async def delete_document(
        self, tenant: str, doc_id: str, *, keep_version: str | None = None
    ) -> int:
        """Delete a document's chunks, except those of `keep_version`; returns points removed."""
        ...

    async def document(self, tenant: str, doc_id: str) -> DocumentState | None: ...

    async def retrieve(self, query: IndexQuery) -> list[Hit]:
        """Union of the dense and BM25 candidates, each with its exact cosine and BM25 score."""
        ...

    async def vectors(self, chunk_ids: Sequence[str]) -> dict[str, Vector]:
        """Dense vectors of these chunks (for MMR)."""
        ...

    async def token_signatures(self, chunk_ids: Sequence[str]) -> dict[str, bytes]:
        """Packed token signatures of these chunks, for late-interaction rerank."""
        ...

    async def stats(self, tenant: str | None = None) -> IndexStats: ...

    async def ready(self) -> bool: ...

    def close(self) -> None: ...


class Reranker(Protocol):
    """Rescores candidates for a query; a cross-encoder could implement this too."""

    @property
    def name(self) -> str: ...

    def scores(self, query: EncodedQuery, hits: Sequence[Hit]) -> list[float]: ...
