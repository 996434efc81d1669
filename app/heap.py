"""The process's resident memory, and giving back to the OS the heap glibc keeps after bulk work."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

# Trim once resident memory has grown this much since the last trim (or the start): bulk
# work (an ingest batch embedded, chunked, encoded) leaves freed blocks inside glibc's arenas,
# which it returns only from the top of each heap; malloc_trim returns the free pages anywhere.
# Measured during a SciFact ingest: 1,365 -> 981 MB resident.
TRIM_AFTER_GROWTH_BYTES = 32 * 1024 * 1024
# Once the work has settled (two readings within this of each other) a smaller excess over the
# last trim is trimmed too: what the last batches freed, below the growth mark.
SETTLED_BYTES = 4 * 1024 * 1024
CHECK_EVERY_SECONDS = 5.0


def resident_bytes() -> int:
    """This process's resident set size (Linux /proc), 0 where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None on another C library (musl, macOS): nothing to trim."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class HeapTrimmer:
    """Trims the heap when resident memory has grown since the last trim.

    The trim runs in a thread: a ctypes call releases the GIL, so searches go on meanwhile
    (other threads' mallocs wait for the arena being trimmed, briefly)."""

    def __init__(
        self,
        *,
        growth_bytes: int = TRIM_AFTER_GROWTH_BYTES,
        settled_bytes: int = SETTLED_BYTES,
        every_seconds: float = CHECK_EVERY_SECONDS,
        rss: Callable[[], int] = resident_bytes,
    ) -> None:
        self._trim = _malloc_trim()
        self._growth = growth_bytes
        self._settled = settled_bytes
        self._every = every_seconds
        self._rss = rss
        self.trims = 0

    async def run(self, stop: asyncio.Event) -> None:
        if self._trim is None:
            return
        baseline = previous = self._rss()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._every)
            now = self._rss()
            grown = now > baseline + self._growth
            settled = now > baseline + self._settled and abs(now - previous) < self._settled
            if grown or settled:
                baseline = previous = await self.trim_now()
                log.debug("heap trimmed: %d -> %d MB resident", now >> 20, baseline >> 20)
            else:
                baseline, previous = min(baseline, now), now

    async def trim_now(self) -> int:
        """Trim, and return resident bytes after it."""
        if self._trim is not None:
            await asyncio.to_thread(self._trim, 0)
            self.trims += 1
        return self._rss()
