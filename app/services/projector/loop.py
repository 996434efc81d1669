"""The projector's loop: read, apply, claim and retry until stopped, with backoff and pause."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from app.domain.events import Streams
from app.errors import DependencyUnavailable, EmbedderUnavailable
from app.ports import DocStatusStore, EmbeddingCache, EventLog
from app.services.indexing import Indexer
from app.services.projector.apply import Applier
from app.services.projector.claims import Claims
from app.services.projector.config import GROUP, ProjectorConfig, ProjectorCounts
from app.services.projector.dead_lettering import DeadLetterer
from app.services.projector.delivery import Delivery
from app.services.projector.retry import FIRST_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS, Retries

log = logging.getLogger(__name__)


class Projector:
    """Reads `streams.documents` as consumer `consumer` of group `indexer` and applies it."""

    def __init__(
        self,
        log: EventLog,
        indexer: Indexer,
        cache: EmbeddingCache,
        status: DocStatusStore,
        *,
        streams: Streams,
        consumer: str,
        config: ProjectorConfig,
        pause: Callable[[], float] | None = None,
        index_id: str | None = None,
    ) -> None:
        self.log = log
        # Seconds to hold off before the embedder may be called again (its breaker is open);
        # 0 to go on.
        self._pause = pause
        self.streams = streams
        self.consumer = consumer
        self.config = config
        # Applied records are per index: one built by another model starts with none, and
        # so does a generation a replay builds (app/services/replay.py names its own index id).
        self.index_id = index_id if index_id is not None else indexer.embedder.model_id
        self.counts = ProjectorCounts()
        self.retries = Retries()
        applier = Applier(
            indexer, cache, status, index_id=self.index_id, config=config, counts=self.counts
        )
        dead_letters = DeadLetterer(
            log, indexer, status, streams=streams, index_id=self.index_id, counts=self.counts
        )
        self.delivery = Delivery(
            log,
            applier,
            dead_letters,
            self.retries,
            stream=self.stream,
            config=config,
            counts=self.counts,
        )
        self.claims = Claims(
            log, self.delivery, stream=self.stream, consumer=consumer, config=config
        )

    @property
    def stream(self) -> str:
        return self.streams.documents

    async def run(self, stop: asyncio.Event) -> None:
        """Project until `stop` is set. The batch in hand is finished first; cancel the task
        to abandon it (its entries stay pending and are redelivered)."""
        joined = recovered = False
        retries = self.retries
        backoff = FIRST_BACKOFF_SECONDS
        claim_every = max(self.config.claim_idle_ms / 2000, 0.05)
        next_claim = time.monotonic() + claim_every
        while not stop.is_set():
            paused = self._pause() if self._pause is not None else 0.0
            if paused > 0:
                # Take nothing new and retry nothing: every call would be refused, and what
                # is refused must not count as a delivery. Look again soon, for `stop`.
                self.counts.paused_waits += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(paused, 1.0))
                if retries.held or retries.at is not None:
                    retries.at = time.monotonic()  # first thing once the API is back
                    retries.delay = FIRST_BACKOFF_SECONDS
                backoff = FIRST_BACKOFF_SECONDS
                continue
            try:
                if not joined:
                    await self.log.ensure_group(self.stream, GROUP, start="0")
                    joined = True
                elif retries.at is not None and time.monotonic() >= retries.at:
                    await self.retry_pending()
                elif retries.held:
                    # The index was down: read nothing new until what is held goes through.
                    due = retries.at if retries.at is not None else time.monotonic()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))
                elif not recovered:
                    await self.claims.recover()
                    recovered = True
                elif time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + claim_every
                    await self.claims.claim_idle(self.config.claim_idle_ms)
                    await self.claims.forget_dead_consumers()
                else:
                    await self.step(self._block_ms(next_claim))
                backoff = FIRST_BACKOFF_SECONDS
            except Exception as exc:
                # Redis or the index is down, or a bug: log it, wait, go on. What was in
                # hand stays pending (or held) and is retried; the loop itself must not die.
                retries.schedule()
                paused = self._pause() if self._pause is not None else 0.0
                if isinstance(exc, EmbedderUnavailable) and paused > 0:
                    log.warning("projector paused, the embeddings API is failing: %s", exc)
                    continue  # the pause above waits for the breaker, not the backoff
                if isinstance(exc, DependencyUnavailable):
                    log.warning("projector waiting %.1f s: %s", backoff, exc)
                else:
                    log.exception("projector step failed; retrying in %.1f s", backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def step(self, block_ms: int = 0) -> int:
        """Read and apply one batch of new entries; returns how many were read."""
        entries = await self.log.read_group(
            self.stream, GROUP, self.consumer, count=self.config.batch, block_ms=block_ms
        )
        await self.delivery.process(entries, redelivered=False)
        return len(entries)

    async def retry_pending(self) -> None:
        """Apply again what failed here before: first what an index outage left held (as
        it is: re-reading would count as another delivery, and an outage is not the entry's
        fault), then every other entry pending on this consumer."""
        retries = self.retries
        retries.at = None
        retries.failed_since_retry = False
        if retries.held:
            held, retries.held = retries.held, []
            # Not struck (an outage is not their fault), but they may have written points
            # before the index went away: dirty. Raises if the index is still down.
            await self.delivery.process(held, redelivered=False, dirty=True)
        await self.claims.drain_own_pending()
        if not retries.failed_since_retry:
            retries.delay = FIRST_BACKOFF_SECONDS

    def _block_ms(self, next_claim: float) -> int:
        at = self.retries.at
        until = next_claim if at is None else min(next_claim, at)
        return max(1, min(self.config.block_ms, int((until - time.monotonic()) * 1000)))

    @contextlib.asynccontextmanager
    async def pause(self) -> AsyncIterator[None]:
        """Nothing is applied (or recorded) while this is held: the batch in hand finishes
        first, and entries read meanwhile wait. A replay holds it to swap generations."""
        async with self.delivery.gate:
            yield
