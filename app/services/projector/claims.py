"""Takes over entries left pending by dead consumers, and removes those consumers from the group."""

from __future__ import annotations

import logging

from app.ports import EventLog
from app.services.projector.config import GROUP, ProjectorConfig
from app.services.projector.delivery import Delivery

log = logging.getLogger(__name__)


class Claims:
    """What consumer `consumer` of group `indexer` takes over on `stream`, and whom it forgets."""

    def __init__(
        self,
        log: EventLog,
        delivery: Delivery,
        *,
        stream: str,
        consumer: str,
        config: ProjectorConfig,
    ) -> None:
        self.log = log
        self.delivery = delivery
        self.stream = stream
        self.consumer = consumer
        self.config = config

    async def recover(self) -> None:
        """Finish what this consumer (or, when exclusive, any dead one) left pending."""
        seen = await self.drain_own_pending()
        if not self.config.exclusive:
            return
        while True:
            claimed = await self.log.claim_idle(
                self.stream, GROUP, self.consumer, min_idle_ms=0, count=self.config.batch
            )
            # Our own failures come back too (XAUTOCLAIM scans every consumer); they wait
            # for their retry rather than being burnt through now.
            fresh = [e for e in claimed if e.id not in seen]
            if not fresh:
                return
            log.info("took over %d entries left pending by a stopped projector", len(fresh))
            seen.update(e.id for e in fresh)
            await self.delivery.process(fresh, redelivered=True)

    async def drain_own_pending(self) -> set[str]:
        """Apply again every entry pending on this consumer; returns their ids."""
        seen: set[str] = set()
        after = "0"
        while True:
            entries = await self.log.read_pending(
                self.stream, GROUP, self.consumer, count=self.config.batch, after=after
            )
            if not entries:
                return seen
            seen.update(e.id for e in entries)
            await self.delivery.process(entries, redelivered=True)
            after = entries[-1].id

    async def claim_idle(self, min_idle_ms: int) -> int:
        """Take over and apply entries idle on any consumer for `min_idle_ms`."""
        claimed = await self.log.claim_idle(
            self.stream, GROUP, self.consumer, min_idle_ms=min_idle_ms, count=self.config.batch
        )
        if claimed:
            log.info("claimed %d entries idle for %d ms or more", len(claimed), min_idle_ms)
            await self.delivery.process(claimed, redelivered=True)
        return len(claimed)

    async def forget_dead_consumers(self) -> list[str]:
        """Remove consumers of processes that are gone from the group: every process joins
        under its own name, so without this the group collects one per restart forever.
        Only consumers with nothing pending go (their entries are claimed first)."""
        idle = self.config.forget_after_ms
        removed = []
        for consumer in await self.log.consumers(self.stream, GROUP):
            if (
                consumer.name != self.consumer
                and consumer.pending == 0
                and consumer.idle_ms >= idle
                and await self.log.forget_consumer(
                    self.stream, GROUP, consumer.name, min_idle_ms=idle
                )
            ):
                removed.append(consumer.name)
        if removed:
            log.info("removed %d consumers idle for %d ms or more: %s", len(removed), idle, removed)
        return removed
