"""IndexCatalog over a Qdrant cluster: a collection per generation, an alias on the active one."""

from __future__ import annotations

import logging

from app.adapters.qdrant_index import QdrantIndex

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

    async def create(self) -> tuple[str, QdrantIndex]:
        generation = await self.index.create_generation()
        return generation, self.index.on_collection(generation)

    async def activate(self, generation: str) -> None:
        previous = await self.index.switch_alias(generation)
        self._active = generation
        if previous is not None and previous != generation:
            await self.index.drop_generation(previous)
            log.info("dropped generation %s of %s", previous, self.index.alias)

    async def discard(self, generation: str) -> None:
        await self.index.drop_generation(generation)

    def close(self) -> None:
        self.index.close()

    async def aclose(self) -> None:
        await self.index.aclose()
