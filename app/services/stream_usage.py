"""How big the event streams are: each one's length and memory, and the memory of the Redis
holding them, for /metrics and /api/v1/stats; the costly per-stream count is sampled rarely.

XLEN and INFO memory cost Redis next to nothing and are read on every call. MEMORY USAGE
with SAMPLES 0 walks every node of the stream, and Redis serves no one else meanwhile:
~0.24 ms for 25,000 entries of 1.3 kB and ~2.3 ms for 250,000 on the reference machine
(bench/stream_memory_cost.py), so a document stream of millions of entries takes tens of
ms. Hence each process samples it at most once a minute, and after a slow sample waits
10,000 times as long as it took (a process then spends at most 0.01% of Redis's time on
it), and the figures in between are the last sample's, with its time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec

from app.domain.events import StoreMemory, Streams
from app.ports import EventLog

MIN_INTERVAL_SECONDS = 60.0
_DUTY = 1e-4  # the share of Redis's time one process may spend counting stream memory


class StreamSize(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    entries: int
    memory_bytes: int | None  # None until the first sample
    memory_sampled_at: float | None  # epoch seconds of that sample


class LogUsage(msgspec.Struct, frozen=True, kw_only=True):
    streams: list[StreamSize]
    memory: StoreMemory


class StreamUsage:
    """The sizes of one deployment's streams (`streams.all`), memory sampled as above."""

    def __init__(
        self,
        event_log: EventLog,
        streams: Streams,
        *,
        min_interval_seconds: float = MIN_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.event_log = event_log
        self.streams = streams
        self.min_interval_seconds = min_interval_seconds
        self._clock = clock
        self._memory: dict[str, tuple[int, float]] = {}  # stream -> (bytes, epoch seconds)
        self._due = 0.0  # clock() after which the next sample is taken
        self._sampling = asyncio.Lock()
        self.samples = 0  # memory samples taken, for tests and curiosity

    async def read(self) -> LogUsage:
        """Lengths and the server's memory now; stream memory as last sampled, sampled first
        when due (by one caller: others meanwhile get the previous figures)."""
        names = self.streams.all
        lengths, memory = await asyncio.gather(
            asyncio.gather(*(self.event_log.length(name) for name in names)),
            self.event_log.memory(self.streams.documents),
        )
        if self._clock() >= self._due and not self._sampling.locked():
            await self._sample(names)
        sizes = []
        for name, entries in zip(names, lengths, strict=True):
            bytes_, at = self._memory.get(name, (None, None))
            sizes.append(
                StreamSize(stream=name, entries=entries, memory_bytes=bytes_, memory_sampled_at=at)
            )
        return LogUsage(streams=sizes, memory=memory)

    async def _sample(self, names: tuple[str, ...]) -> None:
        async with self._sampling:
            started = self._clock()
            # One stream at a time: Redis serves other clients between them.
            for name in names:
                self._memory[name] = (await self.event_log.memory_usage(name), time.time())
            took = self._clock() - started
            self._due = self._clock() + max(self.min_interval_seconds, took / _DUTY)
            self.samples += 1
