"""The memory budget's admission arithmetic, with resident memory given by hand."""

from __future__ import annotations

from app.api.memory_budget import EXPANSION, MIN_REQUEST_BYTES, MemoryBudget
from app.heap import resident_bytes

MB = 1024 * 1024


def test_admits_while_resident_plus_reserved_fits() -> None:
    rss = [100 * MB]
    budget = MemoryBudget(110 * MB, rss=lambda: rss[0], clock=lambda: 0.0)
    one = budget.cost(1 * MB)
    assert one == EXPANSION * MB
    assert budget.try_reserve(one) and budget.try_reserve(one)
    assert not budget.try_reserve(one)  # 100 + 4 + 4 + 4 > 110
    assert (budget.admitted, budget.refused) == (2, 1)
    budget.release(one)
    assert budget.try_reserve(one)


def test_small_requests_cost_a_floor() -> None:
    budget = MemoryBudget(MB, rss=lambda: 0)
    assert budget.cost(10) == MIN_REQUEST_BYTES


def test_resident_memory_is_reread_after_a_while() -> None:
    now = [0.0]
    rss = [100 * MB]
    budget = MemoryBudget(101 * MB, rss=lambda: rss[0], clock=lambda: now[0])
    assert budget.try_reserve(MIN_REQUEST_BYTES)
    budget.release(MIN_REQUEST_BYTES)
    rss[0] = 200 * MB
    assert budget.try_reserve(MIN_REQUEST_BYTES)  # the cached reading still holds
    budget.release(MIN_REQUEST_BYTES)
    now[0] = 1.0
    assert not budget.try_reserve(MIN_REQUEST_BYTES)


def test_reads_this_process_rss() -> None:
    assert resident_bytes() > 10 * MB
