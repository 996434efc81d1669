"""The heap trimmer gives freed heap back to the OS once resident memory has grown."""

from __future__ import annotations

import asyncio
import ctypes

import pytest

from app.heap import HeapTrimmer, resident_bytes

MB = 1024 * 1024


def test_resident_bytes_reads_this_process() -> None:
    assert resident_bytes() > 10 * MB


@pytest.mark.anyio
async def test_freed_heap_goes_back_after_a_trim() -> None:
    """Many small blocks freed out of order stay in glibc's heap (free's own trim only
    returns the heap's top); a trim returns their pages."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(4096) for _ in range(60_000)]  # ~240 MB, below the mmap threshold
    for address in blocks:
        ctypes.memset(address, 1, 4096)  # touched, so resident
    keep = blocks[-1]  # held at the top, so the heap cannot shrink from there
    for address in blocks[:-1]:
        libc.free(address)
    before = resident_bytes()
    after = await HeapTrimmer().trim_now()
    libc.free(keep)
    assert before - after > 150 * MB, (before >> 20, after >> 20)


@pytest.mark.anyio
async def test_trims_only_after_growth_since_the_last_trim() -> None:
    # start 100; 110: no; 200: trim, 120 after it; 140: no (20 over 120); 160: trim.
    readings = [100, 110, 200, 120, 140, 160, 150]
    stop = asyncio.Event()

    def rss() -> int:
        if len(readings) == 1:
            stop.set()
        return readings.pop(0) * MB

    trimmer = HeapTrimmer(growth_bytes=32 * MB, every_seconds=0.001, rss=rss)
    await asyncio.wait_for(trimmer.run(stop), 5)
    assert trimmer.trims == 2 and readings == []


@pytest.mark.anyio
async def test_trims_once_the_work_has_settled() -> None:
    # start 100; 120: growing; 121: settled 21 over the last trim, trim (105 after it);
    # 106, 106: within 4 of 105, nothing.
    readings = [100, 120, 121, 105, 106, 106]
    stop = asyncio.Event()

    def rss() -> int:
        if len(readings) == 1:
            stop.set()
        return readings.pop(0) * MB

    trimmer = HeapTrimmer(growth_bytes=32 * MB, settled_bytes=4 * MB, every_seconds=0.001, rss=rss)
    await asyncio.wait_for(trimmer.run(stop), 5)
    assert trimmer.trims == 1 and readings == []
