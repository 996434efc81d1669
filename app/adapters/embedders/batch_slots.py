"""Bounds how many batches an embedder runs at once, with a semaphore per event loop."""

from __future__ import annotations

import asyncio


class BatchSlots:
    """`limit` slots on the running loop. A semaphore binds to the loop it first waits on;
    keeping one per loop lets the same embedder serve several asyncio.run() calls (CLI
    commands, tests)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    def here(self) -> asyncio.Semaphore:
        """The running loop's semaphore."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.limit))
        return self._slots[1]
