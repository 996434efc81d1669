"""Retention of the feedback and dead-letter streams: each is kept within an age and a length,
trimmed once a minute by one process of the deployment, and every dead letter trimmed is told.

Which process: whichever takes the `retention` lease (app/ports.py Lease) for the minute;
`serve` and `worker` both try. Trimming in every replica would be harmless (XTRIM is
idempotent) but each would read the dead letters about to go, and log and count them, once
per replica; one holder a minute does the work once, whatever the deployment's shape
(embedded, one API, API replicas with or without workers), with nothing to configure.

Dead letters are trimmed whether or not anyone has looked at them: the bounds are the
operator's choice between keeping failures to act on and keeping Redis from filling. Each one
trimmed is logged (its id, tenant, document and error) and counted in
`rag_stream_trimmed_total`, and its document stays `failed` until its client sends it again or
a replay (which applies every document's newest event) gets it through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import msgspec

from app.domain.events import Entry
from app.errors import RagError
from app.ports import EventLog, Lease
from app.services.dead_letters import view
from app.telemetry import metrics

log = logging.getLogger(__name__)

LEASE = "retention"
# Entries read (dead letters, to log them) and trimmed per step, and steps per run: a large
# backlog (a first run on an old stream) goes in steps that each hold Redis briefly, and what
# one run leaves the next one takes.
_PAGE = 500
_MAX_STEPS = 200


class Bound(msgspec.Struct, frozen=True, kw_only=True):
    """How much of one stream is kept."""

    stream: str
    max_age_seconds: int
    max_entries: int  # 0: no bound on length


class Trimmed(msgspec.Struct, frozen=True, kw_only=True):
    """What one run removed from one stream, by the bound that removed it."""

    stream: str
    by_age: int
    by_length: int


def successor(entry_id: str) -> str:
    """The smallest stream id above `entry_id`: trimming below it removes `entry_id` too."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


class Retention:
    """Trims `feedback` (counted) and `dead_letter` (each entry logged before it goes)."""

    def __init__(
        self,
        event_log: EventLog,
        lease: Lease,
        *,
        feedback: Bound,
        dead_letter: Bound,
        holder: str,
        every_seconds: float = 60.0,
    ) -> None:
        self.event_log = event_log
        self.lease = lease
        self.feedback = feedback
        self.dead_letter = dead_letter
        self.holder = holder
        self.every_seconds = every_seconds
        for bound in (feedback, dead_letter):
            metrics.declare_trimmed(bound.stream)

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: every `every_seconds` (with jitter, so replicas started together do
        not all ask at once), trim if this process takes the lease for the period."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                pause = self.every_seconds * random.uniform(0.5, 1.0)
                await asyncio.wait_for(stop.wait(), pause)
            if stop.is_set():
                return
            try:
                held = await self.lease.take(
                    LEASE, holder=self.holder, ttl_ms=int(self.every_seconds * 1000)
                )
                if held:
                    await self.trim()
            except RagError as exc:
                log.warning("retention trim skipped: %s", exc)

    async def trim(self) -> list[Trimmed]:
        """Apply both streams' bounds now, whoever holds the lease."""
        return [await self._trim_feedback(), await self._trim_dead_letters()]

    async def _trim_feedback(self) -> Trimmed:
        bound = self.feedback
        by_age = await self.event_log.trim_older_than(bound.stream, bound.max_age_seconds)
        by_length = 0
        if bound.max_entries:
            by_length = await self.event_log.trim_to_length(bound.stream, bound.max_entries)
        return self._counted(Trimmed(stream=bound.stream, by_age=by_age, by_length=by_length))

    async def _trim_dead_letters(self) -> Trimmed:
        bound = self.dead_letter
        cut_ms = await self.event_log.clock_ms() - bound.max_age_seconds * 1000
        # Ids carry the log's clock: an id below this one is older than the bound (none is
        # when the bound reaches back before 1970).
        too_old = f"{cut_ms}-0"
        by_age = by_length = 0
        for _ in range(_MAX_STEPS if cut_ms > 0 else 0):
            going = await self.event_log.range(bound.stream, end=f"({too_old}", count=_PAGE)
            if not going:
                break
            by_age += await self._remove(going, f"older than {bound.max_age_seconds} s")
        for _ in range(_MAX_STEPS if bound.max_entries else 0):
            excess = await self.event_log.length(bound.stream) - bound.max_entries
            if excess <= 0:
                break
            going = await self.event_log.range(bound.stream, count=min(excess, _PAGE))
            by_length += await self._remove(going, f"beyond {bound.max_entries} entries")
        return self._counted(Trimmed(stream=bound.stream, by_age=by_age, by_length=by_length))

    async def _remove(self, going: list[Entry], why: str) -> int:
        """Trim the oldest entries up to the last of `going`, telling each one. Whatever is
        appended meanwhile has a later id and stays; one requeued or dropped meanwhile is
        gone either way (and the count says what the trim itself removed)."""
        removed = await self.event_log.trim_before(self.dead_letter.stream, successor(going[-1].id))
        for entry in going:
            letter = view(entry)
            log.warning(
                "dead letter %s trimmed (%s): %s/%s %s: %s",
                letter.id,
                why,
                letter.tenant,
                letter.doc_id,
                letter.event_type,
                letter.error,
            )
        metrics.dead_letters_removed(removed)
        return removed

    def _counted(self, trimmed: Trimmed) -> Trimmed:
        metrics.stream_trimmed(trimmed.stream, "age", trimmed.by_age)
        metrics.stream_trimmed(trimmed.stream, "length", trimmed.by_length)
        if trimmed.by_age or trimmed.by_length:
            log.info(
                "retention trimmed %s: %d by age, %d by length",
                trimmed.stream,
                trimmed.by_age,
                trimmed.by_length,
            )
        return trimmed
