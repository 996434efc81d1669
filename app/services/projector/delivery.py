"""Applies one delivered batch and settles each entry: acknowledged, struck, held or dead-lettered.

An entry that keeps failing, or that was delivered more than `max_deliveries` times without
finishing (e.g. because it kills the process), is dead-lettered so it cannot block the rest.
A failure while the index does not answer, or while the embedder cannot embed, is an outage,
not the entry's fault: the entries are held for the retry, without a strike.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from opentelemetry.trace import SpanKind

from app.domain.events import DocumentDeleted, DocumentUpserted, Entry
from app.domain.records import id_key
from app.errors import DependencyUnavailable, EmbedderUnavailable
from app.ports import EventLog
from app.services.projector.apply import Applier, Item
from app.services.projector.config import GROUP, ProjectorConfig, ProjectorCounts
from app.services.projector.dead_lettering import DeadLetterer
from app.services.projector.retry import Retries
from app.telemetry import schema, tracing

log = logging.getLogger(__name__)


class Delivery:
    """Processes what consumer reads of `stream` deliver, one batch at a time."""

    def __init__(
        self,
        log: EventLog,
        applier: Applier,
        dead_letters: DeadLetterer,
        retries: Retries,
        *,
        stream: str,
        config: ProjectorConfig,
        counts: ProjectorCounts,
    ) -> None:
        self.log = log
        self.applier = applier
        self.dead_letters = dead_letters
        self.retries = retries
        self.stream = stream
        self.config = config
        self.counts = counts
        # Held while entries are applied; Projector.pause takes it so nothing is applied meanwhile.
        self.gate = asyncio.Lock()

    async def process(
        self, entries: Sequence[Entry], *, redelivered: bool, dirty: bool = False
    ) -> None:
        """Apply entries and acknowledge them; failures stay pending or are dead-lettered.
        `redelivered`: they were delivered before, so each is applied alone under a strike.
        `dirty`: an earlier attempt at them may have written points (held entries)."""
        if not entries:
            return
        # A batch is its own trace, linked to the request trace of each event that has one.
        links = tracing.links_to(
            [
                (e.event.traceparent, e.id)
                for e in entries
                if isinstance(e.event, DocumentUpserted | DocumentDeleted)
            ]
        )
        async with self.gate:
            with tracing.stage(
                "project",
                kind=SpanKind.CONSUMER,
                links=links,
                attributes={
                    schema.STREAM: self.stream,
                    schema.EVENTS: len(entries),
                    schema.REDELIVERED: redelivered,
                    schema.LINKS: len(links),
                },
            ):
                await self._process(entries, redelivered=redelivered, dirty=dirty)

    async def _process(
        self, entries: Sequence[Entry], *, redelivered: bool, dirty: bool = False
    ) -> None:
        gone: list[str] = []
        poison: list[tuple[Entry, str]] = []
        items: list[Item] = []
        for entry in entries:
            if isinstance(entry.event, DocumentUpserted | DocumentDeleted):
                items.append(Item(entry, entry.event))
            elif entry.event is None and not entry.raw:
                gone.append(entry.id)  # deleted from the stream since: nothing left to apply
            elif entry.event is None:
                poison.append((entry, entry.error or "entry does not decode"))
            else:
                poison.append((entry, f"{type(entry.event).__name__} is not a document event"))
        if gone:
            await self.log.ack(self.stream, GROUP, gone)
        if poison:
            await self.dead_letters.dead_letter(poison)

        failures: dict[str, tuple[Item, BaseException]] = {}
        if redelivered and items:
            # Delivered before and not acknowledged: their process died (or they failed).
            # Which entry killed it, if any, is unknown, so each is applied on its own, and
            # only a death during an entry's own apply strikes it (_apply_each). Entries
            # with fewer strikes go first, so a poison entry delays no other.
            strikes = await self.log.strikes(self.stream, GROUP, [i.entry.id for i in items])
            exhausted = [
                i for i in items if strikes.get(i.entry.id, 0) >= self.config.max_deliveries
            ]
            if exhausted:
                await self.dead_letters.dead_letter(
                    [
                        (
                            i.entry,
                            f"the projector died {strikes[i.entry.id]} times while applying it "
                            "on its own (or it failed)",
                        )
                        for i in exhausted
                    ],
                    strikes,
                )
            done = {i.entry.id for i in exhausted}
            isolated = sorted(
                (i for i in items if i.entry.id not in done),
                key=lambda i: (strikes.get(i.entry.id, 0), id_key(i.entry.id)),
            )
            failures.update(await self._apply_each(isolated))
        elif items:
            try:
                await self.applier.apply(items, dirty=dirty)
            except Exception as exc:
                if isinstance(exc, EmbedderUnavailable):
                    # An embedder outage fails every entry alike: no culprit to look for.
                    failures.update({i.entry.id: (i, exc) for i in items})
                else:
                    # Which one is it? Apply them one by one; the good ones go through.
                    # They may have written points before the batch failed: dirty.
                    failures.update(await self._apply_each(items))
            else:
                await self.log.ack(self.stream, GROUP, [i.entry.id for i in items])
        if failures:
            await self._failed(failures)

    async def _apply_each(self, items: Sequence[Item]) -> dict[str, tuple[Item, BaseException]]:
        """Apply entries one at a time, each under a strike that stands only if the process
        dies during it: the in-flight marker of an isolated apply."""
        failures: dict[str, tuple[Item, BaseException]] = {}
        for item in items:
            entry_id = item.entry.id
            await self.log.add_strikes(self.stream, GROUP, [entry_id])
            try:
                await self.applier.apply([item], dirty=True)
            except Exception as exc:
                # It did not kill the process: the marker comes off, and _failed decides
                # whether the failure is the entry's (a strike) or an outage (none).
                await self.log.add_strikes(self.stream, GROUP, [entry_id], -1)
                failures[entry_id] = (item, exc)
            else:
                await self.log.ack(self.stream, GROUP, [entry_id])
                await self.log.clear_strikes(self.stream, GROUP, [entry_id])
        return failures

    async def _failed(self, failures: dict[str, tuple[Item, BaseException]]) -> None:
        self.counts.failures += len(failures)
        outage = next((e for _, e in failures.values() if isinstance(e, EmbedderUnavailable)), None)
        if outage is not None:
            # Not the entries' fault: held and retried as they are, like an index outage.
            self.retries.held += [item.entry for item, _ in failures.values()]
            raise EmbedderUnavailable(
                f"{len(failures)} entries wait for the embeddings API: {outage}",
                retry_after=outage.retry_after,
            ) from outage
        if not await self.applier.indexer.index.ready():
            # Nothing can be applied now; these entries are not at fault. They are held and
            # retried as they are, without striking them.
            self.retries.held += [item.entry for item, _ in failures.values()]
            first = next(iter(failures.values()))[1]
            raise DependencyUnavailable(
                f"the index does not answer; {len(failures)} entries wait: {first}"
            ) from first
        counts = await self.log.add_strikes(self.stream, GROUP, list(failures))
        dead: list[tuple[Entry, str]] = []
        for entry_id, (item, exc) in failures.items():
            strikes = counts.get(entry_id, 0)
            reason = f"{type(exc).__name__}: {exc}"
            if strikes >= self.config.max_deliveries:
                dead.append((item.entry, reason))
            else:
                log.warning(
                    "applying %s (%s) failed, strike %d of %d: %s",
                    entry_id,
                    item.event.doc_id,
                    strikes,
                    self.config.max_deliveries,
                    reason,
                )
        if dead:
            await self.dead_letters.dead_letter(dead, counts)
        if len(dead) < len(failures):
            self.retries.schedule()
