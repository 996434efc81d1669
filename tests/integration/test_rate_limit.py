"""The Redis token bucket against a real server: burst, refill, atomicity, isolation, outages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from app.adapters.redis.client import RedisTarget
from app.adapters.redis.rate_limit import RedisRateLimiter
from tests.e2e.server import free_port
from tests.integration.redis_fixtures import ALL_BACKENDS, RawRedis

pytest_plugins = ("tests.integration.redis_fixtures",)
pytestmark = pytest.mark.anyio
REDIS_BACKENDS = ALL_BACKENDS


@pytest.fixture()
async def limiter(redis_target: RedisTarget, prefix: str) -> AsyncIterator[RedisRateLimiter]:
    made = RedisRateLimiter(redis_target, prefix=prefix, pool_size=8)
    yield made
    await made.close()


async def test_a_full_bucket_allows_the_burst_then_refuses(limiter: RedisRateLimiter) -> None:
    decisions = [await limiter.take("k", rate=0.5, burst=5) for _ in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    refused = decisions[-1]
    assert refused.limit == 5 and refused.remaining == 0
    # One token comes back in 2 s at 0.5/s; the bucket is full again after 10 s.
    assert 1.5 < refused.retry_after_seconds <= 2.0
    assert 9.0 < refused.reset_seconds <= 10.0


async def test_tokens_refill_at_the_rate(limiter: RedisRateLimiter) -> None:
    for _ in range(2):
        assert (await limiter.take("k", rate=2, burst=2)).allowed
    assert not (await limiter.take("k", rate=2, burst=2)).allowed
    await asyncio.sleep(0.6)  # 2/s: one token back (1.2), the next in another 0.4 s
    assert (await limiter.take("k", rate=2, burst=2)).allowed
    assert not (await limiter.take("k", rate=2, burst=2)).allowed


async def test_concurrent_takes_never_overspend(limiter: RedisRateLimiter) -> None:
    """The script is atomic: 200 takes racing on 8 connections spend exactly the burst."""
    decisions = await asyncio.gather(
        *(limiter.take("shared", rate=0.001, burst=50) for _ in range(200))
    )
    assert sum(d.allowed for d in decisions) == 50


async def test_keys_have_their_own_buckets(limiter: RedisRateLimiter, raw_redis: RawRedis) -> None:
    for _ in range(2):
        assert (await limiter.take("a", rate=0.01, burst=2)).allowed
    assert not (await limiter.take("a", rate=0.01, burst=2)).allowed
    assert (await limiter.take("b", rate=0.01, burst=2)).allowed
    ttl = await raw_redis.pttl(limiter.key("a"))
    # An idle bucket expires once it would be full again (here ~200 s), so it costs nothing.
    assert 0 < ttl <= 201_000


async def test_redis_down_fails_open_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    dead = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    try:
        with caplog.at_level(logging.WARNING):
            decisions = [await dead.take("k", rate=1, burst=1) for _ in range(3)]
    finally:
        await dead.close()
    assert all(d.allowed for d in decisions)
    assert dead.failed_open == 3
    warnings = [r for r in caplog.records if "rate limiter unavailable" in r.getMessage()]
    assert len(warnings) == 1  # throttled, not one per request
