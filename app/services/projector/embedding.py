"""Embeds chunks, embedding cache first, and writes them to the index as points."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from opentelemetry.trace import Span

from app.domain.records import Chunk, IndexedChunk, Vector
from app.ports import CachedEmbedding, Embedder, EmbeddingCache, VectorIndex
from app.telemetry import schema, tracing


class ChunkWriter:
    """The one embed-and-write path, for the live projector and a replay alike."""

    def __init__(
        self, embedder: Embedder, index: VectorIndex, cache: EmbeddingCache, *, step: int
    ) -> None:
        self.embedder = embedder
        self.index = index
        self.cache = cache
        self.step = step  # chunks embedded and written at a time, bounding memory

    async def write(self, chunks: Sequence[Chunk]) -> None:
        """Embed (cache first) and upsert, in steps of `step`; the index write of one step
        runs while the next step is embedded."""
        step = self.step
        writing: asyncio.Task[None] | None = None
        try:
            for start in range(0, len(chunks), step):
                part = chunks[start : start + step]
                embedded = await self.embed(part)
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(
                    self.index.upsert(
                        [
                            IndexedChunk(chunk=chunk, vector=vector, token_signature=signature)
                            for chunk, (vector, signature) in zip(part, embedded, strict=True)
                        ]
                    )
                )
            if writing is not None:
                await writing
        except BaseException:
            if writing is not None and not writing.done():
                writing.cancel()
            raise

    async def embed(self, chunks: Sequence[Chunk]) -> list[tuple[Vector, bytes | None]]:
        """Vectors and token signatures of the chunks, from the cache or the embedder."""
        with tracing.tracer().start_as_current_span(schema.EMBED) as span:
            return await self._embed_traced(chunks, span)

    async def _embed_traced(
        self, chunks: Sequence[Chunk], span: Span
    ) -> list[tuple[Vector, bytes | None]]:
        model = self.embedder.model_id
        dim = self.embedder.dim
        by_tenant: dict[str, list[str]] = defaultdict(list)
        seen: set[tuple[str, str]] = set()
        for chunk in chunks:
            if (chunk.tenant, chunk.embed_text) not in seen:  # identical texts embed once
                seen.add((chunk.tenant, chunk.embed_text))
                by_tenant[chunk.tenant].append(chunk.embed_text)
        found: dict[tuple[str, str], tuple[Vector, bytes | None]] = {}
        missing: list[tuple[str, str]] = []
        for tenant, texts in by_tenant.items():
            cached = await self.cache.get_many(tenant, model, texts)
            for text, item in zip(texts, cached, strict=True):
                if item is not None and len(item.vector) == dim * 4:
                    found[(tenant, text)] = (np.frombuffer(item.vector, np.float32), item.signature)
                else:  # a miss, or written for another dimension
                    missing.append((tenant, text))
        span.set_attributes(
            {
                schema.MODEL: model,
                schema.BATCH_SIZE: len(missing),
                schema.CACHE_HITS: len(found),
                schema.CACHE_MISSES: len(missing),
                schema.CACHE: "miss" if not found else "partial" if missing else "hit",
            }
        )
        if missing:
            encoded = await self.embedder.embed_documents([text for _, text in missing])
            signatures = encoded.token_signatures
            fresh: dict[str, tuple[list[str], list[CachedEmbedding]]] = defaultdict(
                lambda: ([], [])
            )
            for i, (tenant, text) in enumerate(missing):
                signature = None if signatures is None else signatures[i]
                found[(tenant, text)] = (encoded.vectors[i], signature)
                texts, items = fresh[tenant]
                texts.append(text)
                items.append(
                    CachedEmbedding(vector=encoded.vectors[i].tobytes(), signature=signature)
                )
            for tenant, (texts, items) in fresh.items():
                await self.cache.put_many(tenant, model, texts, items)
        return [found[(chunk.tenant, chunk.embed_text)] for chunk in chunks]
