"""The projector: applies the document stream to the index as consumer group `indexer`.

Delivery is at least once, so applying must be idempotent, and entries may arrive out of
order (a claimed entry of a dead consumer is older than what was applied since), so applying
must be ordered by stream id per document:

- every document's applied record (app/domain/doc_status.py) names the newest entry the index
  reflects; an entry not newer than that is skipped, so an old upsert never overwrites a
  newer version and never resurrects a deleted document;
- point ids are deterministic (tenant, doc id, chunk index) and a new version's chunks are
  written before the other versions' are dropped, so applying an entry twice, or a crash
  anywhere in between, leaves the same points;
- an entry is acknowledged only after the index writes returned (Edge flushes before it
  returns) and the applied record is stored; a crash before that means redelivery.

A batch's upserts are chunked, looked up in the embedding cache and embedded together, so the
embedder sees large batches across documents. When a batch fails, its entries are applied one
by one to find the culprits; an entry that keeps failing (or that was delivered more than
RAG_PROJECTOR_MAX_DELIVERIES times without finishing, e.g. because it kills the process) is
moved to the dead-letter stream with the error and acknowledged, so it cannot block the rest.
Failures while the index itself does not answer, or while the embeddings API cannot embed
(EmbedderUnavailable), are an outage, not poison: nothing is dead-lettered, the entries wait
and are retried with backoff. While the embedder's circuit breaker is open (`pause`), the
projector takes no new entries at all: they wait in the stream, undelivered, and are
applied once a probe finds the API back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import NamedTuple

import msgspec
import numpy as np
from opentelemetry.trace import Span, SpanKind

from app.domain.doc_status import Applied, DocStatusStore
from app.domain.events import DocumentDeleted, DocumentUpserted, Entry, EventDeadLettered, Streams
from app.domain.records import Chunk, IndexedChunk, Vector, id_key
from app.errors import DependencyUnavailable, EmbedderUnavailable
from app.ports import CachedEmbedding, EmbeddingCache, EventLog
from app.services.indexing import Indexer
from app.telemetry import metrics, schema, tracing

log = logging.getLogger(__name__)

GROUP = "indexer"

_FIRST_BACKOFF_SECONDS = 0.5
_MAX_BACKOFF_SECONDS = 30.0


class ProjectorConfig(msgspec.Struct, frozen=True, kw_only=True):
    batch: int = 64  # entries read and applied at a time (RAG_PROJECTOR_BATCH)
    max_deliveries: int = 5  # RAG_PROJECTOR_MAX_DELIVERIES
    claim_idle_ms: int = 60_000  # RAG_PROJECTOR_CLAIM_IDLE_MS
    block_ms: int = 500  # longest blocking read, hence the longest wait for `stop`
    write_chunks: int = 256  # chunks embedded and written per step, bounding memory
    # No other process writes this index (the embedded Edge shard is held by this process
    # alone), so every entry pending on another consumer belongs to a dead process: take
    # them over at start instead of waiting claim_idle_ms for them.
    exclusive: bool = False
    # A consumer with nothing pending and idle this long belongs to a process that is gone
    # (a live one reads every block_ms); its name is removed from the group. None: ten
    # times claim_idle_ms, far past anything a live projector's pause could explain.
    forget_idle_ms: int | None = None
    # The index is a generation this projector alone has written since it was created (a
    # replay's): a document with no applied record has nothing in it to sweep, so the
    # per-document delete of other versions or of a deleted document (a filtered count
    # and delete each) is skipped.
    fresh_index: bool = False
    # Fault injection for tests (RAG_FAULT_KILL_DOC_ID): SIGKILL this process whenever this
    # document is about to be applied, as a poison event that crashes the process would.
    kill_on_doc: str | None = None

    @property
    def forget_after_ms(self) -> int:
        return 10 * self.claim_idle_ms if self.forget_idle_ms is None else self.forget_idle_ms


class ProjectorCounts(msgspec.Struct, kw_only=True):
    """What this projector did since it started."""

    batches: int = 0
    applied: int = 0  # events applied to the index
    skipped: int = 0  # events already reflected by an equal or newer one
    failures: int = 0  # failed attempts (each retried or dead-lettered)
    dead_lettered: int = 0
    paused_waits: int = 0  # waits while the embedder's breaker was open
    chunks: int = 0  # chunks written (embedded or taken from the cache)


class _Item(NamedTuple):
    entry: Entry
    event: DocumentUpserted | DocumentDeleted


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
        self.indexer = indexer
        self.cache = cache
        self.status = status
        self.streams = streams
        self.consumer = consumer
        self.config = config
        # Applied records are per index: one built by another model starts with none, and
        # so does a generation a replay builds (app/services/replay.py names its own index id).
        self.index_id = index_id if index_id is not None else indexer.embedder.model_id
        self.counts = ProjectorCounts()
        self._retry_at: float | None = None
        self._retry_delay = _FIRST_BACKOFF_SECONDS
        self._failed_since_retry = False
        # Entries that failed while the index did not answer, kept for the retry.
        self._held: list[Entry] = []
        # Held while entries are applied; pause() takes it so nothing is applied meanwhile.
        self._gate = asyncio.Lock()

    @property
    def stream(self) -> str:
        return self.streams.documents

    # --- the loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Project until `stop` is set. The batch in hand is finished first; cancel the task
        to abandon it (its entries stay pending and are redelivered)."""
        joined = recovered = False
        backoff = _FIRST_BACKOFF_SECONDS
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
                if self._held or self._retry_at is not None:
                    self._retry_at = time.monotonic()  # first thing once the API is back
                    self._retry_delay = _FIRST_BACKOFF_SECONDS
                backoff = _FIRST_BACKOFF_SECONDS
                continue
            try:
                if not joined:
                    await self.log.ensure_group(self.stream, GROUP, start="0")
                    joined = True
                elif self._retry_at is not None and time.monotonic() >= self._retry_at:
                    await self.retry_pending()
                elif self._held:
                    # The index was down: read nothing new until what is held goes through.
                    due = self._retry_at if self._retry_at is not None else time.monotonic()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))
                elif not recovered:
                    await self.recover()
                    recovered = True
                elif time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + claim_every
                    await self.claim_idle(self.config.claim_idle_ms)
                    await self.forget_dead_consumers()
                else:
                    await self.step(self._block_ms(next_claim))
                backoff = _FIRST_BACKOFF_SECONDS
            except Exception as exc:
                # Redis or the index is down, or a bug: log it, wait, go on. What was in
                # hand stays pending (or held) and is retried; the loop itself must not die.
                self._schedule_retry()
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
                backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)

    async def start(self) -> None:
        """Join the group, then recover."""
        await self.log.ensure_group(self.stream, GROUP, start="0")
        await self.recover()

    async def recover(self) -> None:
        """Finish what this consumer (or, when exclusive, any dead one) left pending."""
        seen = await self._drain_own_pending()
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
            await self.process(fresh, redelivered=True)

    async def step(self, block_ms: int = 0) -> int:
        """Read and apply one batch of new entries; returns how many were read."""
        entries = await self.log.read_group(
            self.stream, GROUP, self.consumer, count=self.config.batch, block_ms=block_ms
        )
        await self.process(entries, redelivered=False)
        return len(entries)

    async def claim_idle(self, min_idle_ms: int) -> int:
        """Take over and apply entries idle on any consumer for `min_idle_ms`."""
        claimed = await self.log.claim_idle(
            self.stream, GROUP, self.consumer, min_idle_ms=min_idle_ms, count=self.config.batch
        )
        if claimed:
            log.info("claimed %d entries idle for %d ms or more", len(claimed), min_idle_ms)
            await self.process(claimed, redelivered=True)
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

    async def retry_pending(self) -> None:
        """Apply again what failed here before: first what an index outage left held (as
        it is: re-reading would count as another delivery, and an outage is not the entry's
        fault), then every other entry pending on this consumer."""
        self._retry_at = None
        self._failed_since_retry = False
        if self._held:
            held, self._held = self._held, []
            # Not struck (an outage is not their fault), but they may have written points
            # before the index went away: dirty. Raises if the index is still down.
            await self.process(held, redelivered=False, dirty=True)
        await self._drain_own_pending()
        if not self._failed_since_retry:
            self._retry_delay = _FIRST_BACKOFF_SECONDS

    async def _drain_own_pending(self) -> set[str]:
        seen: set[str] = set()
        after = "0"
        while True:
            entries = await self.log.read_pending(
                self.stream, GROUP, self.consumer, count=self.config.batch, after=after
            )
            if not entries:
                return seen
            seen.update(e.id for e in entries)
            await self.process(entries, redelivered=True)
            after = entries[-1].id

    def _block_ms(self, next_claim: float) -> int:
        until = next_claim if self._retry_at is None else min(next_claim, self._retry_at)
        return max(1, min(self.config.block_ms, int((until - time.monotonic()) * 1000)))

    def _schedule_retry(self) -> None:
        self._failed_since_retry = True
        if self._retry_at is None:
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, _MAX_BACKOFF_SECONDS)

    @contextlib.asynccontextmanager
    async def pause(self) -> AsyncIterator[None]:
        """Nothing is applied (or recorded) while this is held: the batch in hand finishes
        first, and entries read meanwhile wait. A replay holds it to swap generations."""
        async with self._gate:
            yield

    # --- one batch ----------------------------------------------------------------------

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
        async with self._gate:
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

    async def apply(self, entries: Sequence[Entry]) -> dict[str, str]:
        """Apply document entries and record them, outside the consumer group (nothing is
        acknowledged or dead-lettered): how a replay fills a new generation, through the
        same steps as the projector. Entries that are not document events are skipped (the
        group's projector dead-letters them). An entry that fails on its own is recorded
        failed; returns {entry id: error} for those. An outage raises."""
        items = [
            _Item(e, e.event)
            for e in entries
            if isinstance(e.event, DocumentUpserted | DocumentDeleted)
        ]
        if not items:
            return {}
        try:
            await self._apply(items)
            return {}
        except DependencyUnavailable:
            raise
        except Exception:
            log.warning("replay batch failed; applying its %d entries one by one", len(items))
        failures: dict[str, str] = {}
        for item in items:
            try:
                await self._apply([item])
            except DependencyUnavailable:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                failures[item.entry.id] = error
                event = item.event
                await self.status.record_applied(
                    self.index_id,
                    event.tenant,
                    {
                        event.doc_id: Applied(
                            event_id=item.entry.id,
                            status="failed",
                            version=event.version if isinstance(event, DocumentUpserted) else None,
                            error=error,
                            at=time.time(),
                        )
                    },
                )
        return failures

    async def _process(
        self, entries: Sequence[Entry], *, redelivered: bool, dirty: bool = False
    ) -> None:
        self.counts.batches += 1
        gone: list[str] = []
        poison: list[tuple[Entry, str]] = []
        items: list[_Item] = []
        for entry in entries:
            if isinstance(entry.event, DocumentUpserted | DocumentDeleted):
                items.append(_Item(entry, entry.event))
            elif entry.event is None and not entry.raw:
                gone.append(entry.id)  # deleted from the stream since: nothing left to apply
            elif entry.event is None:
                poison.append((entry, entry.error or "entry does not decode"))
            else:
                poison.append((entry, f"{type(entry.event).__name__} is not a document event"))
        if gone:
            await self.log.ack(self.stream, GROUP, gone)
        if poison:
            await self._dead_letter(poison)

        failures: dict[str, tuple[_Item, BaseException]] = {}
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
                await self._dead_letter(
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
                await self._apply(items, dirty=dirty)
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

    async def _apply_each(self, items: Sequence[_Item]) -> dict[str, tuple[_Item, BaseException]]:
        """Apply entries one at a time, each under a strike that stands only if the process
        dies during it: the in-flight marker of an isolated apply."""
        failures: dict[str, tuple[_Item, BaseException]] = {}
        for item in items:
            entry_id = item.entry.id
            await self.log.add_strikes(self.stream, GROUP, [entry_id])
            try:
                await self._apply([item], dirty=True)
            except Exception as exc:
                # It did not kill the process: the marker comes off, and _failed decides
                # whether the failure is the entry's (a strike) or an outage (none).
                await self.log.add_strikes(self.stream, GROUP, [entry_id], -1)
                failures[entry_id] = (item, exc)
            else:
                await self.log.ack(self.stream, GROUP, [entry_id])
                await self.log.clear_strikes(self.stream, GROUP, [entry_id])
        return failures

    async def _failed(self, failures: dict[str, tuple[_Item, BaseException]]) -> None:
        self.counts.failures += len(failures)
        outage = next((e for _, e in failures.values() if isinstance(e, EmbedderUnavailable)), None)
        if outage is not None:
            # Not the entries' fault: held and retried as they are, like an index outage.
            self._held += [item.entry for item, _ in failures.values()]
            raise EmbedderUnavailable(
                f"{len(failures)} entries wait for the embeddings API: {outage}",
                retry_after=outage.retry_after,
            ) from outage
        if not await self.indexer.index.ready():
            # Nothing can be applied now; these entries are not at fault. They are held and
            # retried as they are, without striking them.
            self._held += [item.entry for item, _ in failures.values()]
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
            await self._dead_letter(dead, counts)
        if len(dead) < len(failures):
            self._schedule_retry()

    async def _dead_letter(
        self, entries: Sequence[tuple[Entry, str]], counts: dict[str, int] | None = None
    ) -> None:
        """Move entries to the dead-letter stream with why, drop any points they wrote,
        mark their documents failed and acknowledge them, in that order: a crash in between
        repeats a step, never skips one."""
        ids = [entry.id for entry, _ in entries]
        if counts is None:
            counts = await self.log.strikes(self.stream, GROUP, ids)
        now = time.time()
        await self.log.append_many(
            self.streams.dead_letter,
            [
                EventDeadLettered(
                    source_stream=self.stream,
                    source_id=entry.id,
                    group=GROUP,
                    raw=entry.raw,
                    error=error,
                    deliveries=counts.get(entry.id, 1),
                    at=now,
                )
                for entry, error in entries
            ],
        )
        failed: dict[str, dict[str, Applied]] = defaultdict(dict)
        for entry, error in entries:
            event = entry.event
            if isinstance(event, DocumentUpserted):
                # An attempt that died after writing left points no record names.
                await self.indexer.drop_written_by(event.tenant, event.doc_id, entry.id)
            if isinstance(event, DocumentUpserted | DocumentDeleted):
                failed[event.tenant][event.doc_id] = Applied(
                    event_id=entry.id,
                    status="failed",
                    version=event.version if isinstance(event, DocumentUpserted) else None,
                    error=error,
                    at=now,
                )
            log.error(
                "dead-lettered %s after %d strikes: %s", entry.id, counts.get(entry.id, 1), error
            )
        for tenant, records in failed.items():
            await self.status.record_applied(self.index_id, tenant, records)
        await self.log.ack(self.stream, GROUP, ids)
        await self.log.clear_strikes(self.stream, GROUP, ids)
        self.counts.dead_lettered += len(entries)
        metrics.dead_lettered(len(entries))

    # --- applying -----------------------------------------------------------------------

    async def _apply(self, items: Sequence[_Item], *, dirty: bool = False) -> None:
        """Bring the index up to date with these entries (any order, any repetition, any
        number of projectors at once; docs/design.md, "Several projectors").

        Each document's applied record only moves forward (compare-and-set in the status
        store), and points are swept only by the winner of that record, after it is stored,
        and only those of older events; a loser drops the points it wrote itself. `dirty`:
        the entries may have written points in an earlier, unfinished attempt."""
        newest: dict[tuple[str, str], _Item] = {}
        for item in items:
            key = (item.event.tenant, item.event.doc_id)
            if key not in newest or id_key(item.entry.id) > id_key(newest[key].entry.id):
                newest[key] = item
        skipped = len(items) - len(newest)  # superseded within the batch

        by_tenant: dict[str, list[_Item]] = defaultdict(list)
        for item in newest.values():
            by_tenant[item.event.tenant].append(item)
        upserts: list[tuple[_Item, DocumentUpserted]] = []
        unchanged: list[tuple[_Item, DocumentUpserted, Applied]] = []
        deletes: list[_Item] = []
        unrecorded: dict[str, set[str]] = defaultdict(set)
        for tenant, group in by_tenant.items():
            current = await self.status.applied(
                self.index_id, tenant, [i.event.doc_id for i in group]
            )
            for item, applied in zip(group, current, strict=True):
                event = item.event
                if applied is None:
                    unrecorded[tenant].add(event.doc_id)
                if applied is not None and id_key(applied.event_id) >= id_key(item.entry.id):
                    skipped += 1  # the index already reflects this entry or a later one
                elif isinstance(event, DocumentDeleted):
                    deletes.append(item)
                elif (
                    applied is not None
                    and applied.status == "indexed"
                    and applied.version == event.version
                    and applied.points is not None
                ):
                    unchanged.append((item, event, applied))
                else:
                    upserts.append((item, event))
        self._maybe_crash([i for i, _ in upserts] + [i for i, _, _ in unchanged] + deletes)

        plans = await asyncio.to_thread(self._plan, [(i.entry.id, e) for i, e in upserts])
        await self._write([chunk for plan in plans for chunk in plan])

        now = time.time()
        records: dict[str, dict[str, Applied]] = defaultdict(dict)
        expect: dict[str, dict[str, str]] = defaultdict(dict)
        for (item, event), plan in zip(upserts, plans, strict=True):
            records[event.tenant][event.doc_id] = Applied(
                event_id=item.entry.id,
                status="indexed",
                version=event.version,
                chunks=len(plan),
                points=item.entry.id,
                at=now,
            )
        for item, event, applied in unchanged:
            # Its version's points are there already: adopted, if the record they belong
            # to is still the one in force.
            records[event.tenant][event.doc_id] = Applied(
                event_id=item.entry.id,
                status="indexed",
                version=event.version,
                chunks=applied.chunks,
                points=applied.points,
                at=now,
            )
            expect[event.tenant][event.doc_id] = applied.event_id
        for item in deletes:
            records[item.event.tenant][item.event.doc_id] = Applied(
                event_id=item.entry.id, status="deleted", at=now
            )
        stored: set[tuple[str, str]] = set()
        for tenant, by_doc in records.items():
            won = await self.status.record_applied(
                self.index_id, tenant, by_doc, expect=expect.get(tenant)
            )
            stored |= {(tenant, doc_id) for doc_id in won}

        # Winners sweep what older events wrote; losers drop what they wrote themselves.
        # A fresh generation holds nothing of a document it has no record of.
        def fresh(tenant: str, doc_id: str) -> bool:
            return self.config.fresh_index and doc_id in unrecorded[tenant]

        sweeps = []
        for item, event in upserts:
            if (event.tenant, event.doc_id) not in stored:
                sweeps.append(
                    self.indexer.drop_written_by(event.tenant, event.doc_id, item.entry.id)
                )
            elif not fresh(event.tenant, event.doc_id):
                sweeps.append(self.indexer.sweep(event.tenant, event.doc_id, before=item.entry.id))
        for item in deletes:
            key = (item.event.tenant, item.event.doc_id)
            if key in stored and not fresh(*key):
                sweeps.append(self.indexer.sweep(*key, before=item.entry.id))
        for _, event, applied in unchanged:
            if (event.tenant, event.doc_id) in stored and applied.points is not None:
                sweeps.append(self.indexer.sweep(event.tenant, event.doc_id, before=applied.points))
        await asyncio.gather(*sweeps)
        lost = [item for item, event, _ in unchanged if (event.tenant, event.doc_id) not in stored]

        if dirty:
            done = {i.entry.id for i, _ in upserts} | {i.entry.id for i in deletes}
            done |= {i.entry.id for i, _, _ in unchanged}
            await self._tidy([i for i in items if i.entry.id not in done])

        self.counts.applied += len(upserts) + len(unchanged) - len(lost) + len(deletes)
        self.counts.chunks += sum(len(plan) for plan in plans)
        self.counts.skipped += skipped
        if lost:
            # Another projector replaced the record whose points this entry would adopt:
            # decide again against the record now in force.
            await self._apply(lost, dirty=dirty)

    async def _tidy(self, items: Sequence[_Item]) -> None:
        """Finish what an earlier attempt at these (skipped) entries may have left: the
        sweep of an entry whose record was stored, or the points of one that lost."""
        by_tenant: dict[str, list[_Item]] = defaultdict(list)
        for item in items:
            by_tenant[item.event.tenant].append(item)
        for tenant, group in by_tenant.items():
            records = await self.status.applied(
                self.index_id, tenant, [i.event.doc_id for i in group]
            )
            for item, record in zip(group, records, strict=True):
                doc_id = item.event.doc_id
                if record is not None and record.event_id == item.entry.id:
                    if record.status == "deleted" or record.points is not None:
                        before = record.points or record.event_id
                        await self.indexer.sweep(tenant, doc_id, before=before)
                elif isinstance(item.event, DocumentUpserted) and (
                    record is None or record.points != item.entry.id
                ):
                    await self.indexer.drop_written_by(tenant, doc_id, item.entry.id)

    def _maybe_crash(self, items: Sequence[_Item]) -> None:
        """The fault-injection hook RAG_FAULT_KILL_DOC_ID (tests only): die as a poison
        event would, by SIGKILL, whenever that document is about to be applied."""
        target = self.config.kill_on_doc
        if target and any(i.event.doc_id == target for i in items):
            log.critical("RAG_FAULT_KILL_DOC_ID: killing this process applying %s", target)
            os.kill(os.getpid(), signal.SIGKILL)

    def _plan(self, events: Sequence[tuple[str, DocumentUpserted]]) -> list[list[Chunk]]:
        # Chunking tokenizes every document: CPU work kept off the event loop.
        return [self.indexer.plan_event(event, event_id) for event_id, event in events]

    async def _write(self, chunks: Sequence[Chunk]) -> None:
        """Embed (cache first) and upsert, in steps of `write_chunks`; the index write of one
        step runs while the next step is embedded."""
        step = self.config.write_chunks
        writing: asyncio.Task[None] | None = None
        try:
            for start in range(0, len(chunks), step):
                part = chunks[start : start + step]
                embedded = await self._embed(part)
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(
                    self.indexer.index.upsert(
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

    async def _embed(self, chunks: Sequence[Chunk]) -> list[tuple[Vector, bytes | None]]:
        """Vectors and token signatures of the chunks, from the cache or the embedder."""
        with tracing.tracer().start_as_current_span(schema.EMBED) as span:
            return await self._embed_traced(chunks, span)

    async def _embed_traced(
        self, chunks: Sequence[Chunk], span: Span
    ) -> list[tuple[Vector, bytes | None]]:
        model = self.indexer.embedder.model_id
        dim = self.indexer.embedder.dim
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
            encoded = await self.indexer.embedder.embed_documents([text for _, text in missing])
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
