"""IndexCatalog over a Qdrant cluster: a collection per generation, an alias on the active one."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, Sequence

from app.adapters.qdrant.remote_collection import (
    generation_name,
    generations,
    live_generation,
    point_alias,
)
from app.adapters.qdrant.remote_index import QdrantIndex
from app.adapters.qdrant.sparse_bm25 import SparseBm25
from app.domain.records import Chunk
from app.errors import RagError

log = logging.getLogger(__name__)


class QdrantCatalog:
    """Generations are collections `<alias>--g<µs>`; the alias names the active one.

    Switching the alias is one atomic operation on the cluster, so every replica and worker
    reads and writes the new generation from the moment it lands, and it outlives any process.
    `current()` is the index bound to the alias itself (the server resolves it per call), so it
    never has to be re-resolved here.
    """

    def __init__(self, index: QdrantIndex) -> None:
        self.index = index
        # What this process last saw the alias point at; the alias itself is the truth.
        self._active = index.alias

    @property
    def active(self) -> str:
        return self._active

    def current(self) -> QdrantIndex:
        return self.index

    async def create(
        self, *, corpus: AsyncIterable[Sequence[Chunk]] | None = None
    ) -> tuple[str, QdrantIndex]:
        # BM25's length normalisation is baked into each sparse vector when it is written, so
        # a generation is made with the mean length of what it is built from (a replay's
        # corpus), kept in its metadata; without a corpus, the index's default.
        avg_len = None if corpus is None else await measure_avg_len(corpus)
        generation = generation_name(self.index.alias)
        await self.index.call(self.index.create_collection, generation, avg_len)
        return generation, self.index.on_collection(generation)

    async def activate(self, generation: str) -> None:
        previous = await self.current_generation()
        await self.index.call(
            point_alias,
            self.index.client,
            self.index.alias,
            generation,
            replacing=previous is not None,
        )
        log.info("alias %s now points at %s (was %s)", self.index.alias, generation, previous)
        self._active = generation
        # The alias's writes must now normalise BM25 as the new generation was built to.
        self.index.forget_collection_metadata()
        if previous is not None and previous != generation:
            await self.discard(previous)
            log.info("dropped generation %s of %s", previous, self.index.alias)

    async def discard(self, generation: str) -> None:
        """Delete a generation collection; the one the alias points at is refused."""
        if generation == await self.current_generation():
            raise RagError(
                f"{generation} is the live generation of {self.index.alias}: switch first"
            )
        await self.index.call(self.index.client.delete_collection, generation)

    async def current_generation(self) -> str | None:
        """The collection the alias points at, asked of the cluster; None before first use."""
        return await self.index.call(live_generation, self.index.client, self.index.alias)

    async def generations(self) -> list[str]:
        """Every generation collection of the alias, oldest first."""
        return await self.index.call(generations, self.index.client, self.index.alias)

    def close(self) -> None:
        self.index.close()

    async def aclose(self) -> None:
        await self.index.aclose()


async def measure_avg_len(corpus: AsyncIterable[Sequence[Chunk]]) -> float | None:
    """The mean BM25 length (SparseBm25.token_count of the text the sparse vector is made
    from) of the corpus's chunks; None when no chunk has a token.

    A chunk with no token left gets no sparse vector, and Edge's text index leaves it out
    too, so it does not count.
    """
    started = time.perf_counter()
    counter = SparseBm25()
    total = counted = 0
    async for chunks in corpus:
        lengths = await asyncio.to_thread(_lengths, counter, chunks)
        total += sum(lengths)
        counted += sum(1 for n in lengths if n)
    mean = total / counted if counted else None
    log.info(
        "measured the mean BM25 length of %d chunks in %.2f s: %s",
        counted,
        time.perf_counter() - started,
        "none (no chunk has a token)" if mean is None else f"{mean:.2f} tokens",
    )
    return mean


def _lengths(counter: SparseBm25, chunks: Sequence[Chunk]) -> list[int]:
    # embed_text, as app.adapters.qdrant.remote_index makes each chunk's sparse vector from it
    return [counter.token_count(chunk.embed_text) for chunk in chunks]
