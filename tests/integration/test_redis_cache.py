"""The Redis embedding cache against a real server: hits, TTL, round trips, isolation, outages."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from app.adapters.redis.cache import RedisEmbeddingCache
from app.adapters.redis.client import RedisTarget
from app.adapters.redis.embedded import EmbeddedRedis
from app.ports import CachedEmbedding, CacheStats
from tests.integration.redis_fixtures import ALL_BACKENDS, RawRedis

if TYPE_CHECKING:
    from tests.integration.redis_fixtures import RoundTrips

pytest_plugins = ("tests.integration.redis_fixtures",)
pytestmark = pytest.mark.anyio
REDIS_BACKENDS = ALL_BACKENDS

MODEL = "minilm-l6-int8"


def embedding(seed: int, signature: bool = True) -> CachedEmbedding:
    rng = np.random.default_rng(seed)
    return CachedEmbedding(
        vector=rng.standard_normal(384).astype(np.float32).tobytes(),
        signature=rng.bytes(48 * 7) if signature else None,
    )


@pytest.fixture()
async def cache(redis_target: RedisTarget, prefix: str) -> AsyncIterator[RedisEmbeddingCache]:
    made = RedisEmbeddingCache(redis_target, prefix=prefix, ttl_seconds=3600, pool_size=2)
    yield made
    await made.close()


async def test_misses_then_hits(cache: RedisEmbeddingCache) -> None:
    texts = ["alpha", "bravo", "charlie", "alpha"]
    assert await cache.get_many("t", MODEL, texts) == [None] * 4
    items = [embedding(1), embedding(2, signature=False)]
    await cache.put_many("t", MODEL, ["alpha", "bravo"], items)
    found = await cache.get_many("t", MODEL, texts)
    assert found == [items[0], items[1], None, items[0]]
    assert found[0] is not None
    vector = np.frombuffer(found[0].vector, dtype=np.float32)
    assert vector.shape == (384,) and vector.tobytes() == items[0].vector
    assert cache.stats() == CacheStats(hits=3, misses=5, writes=2, errors=0)
    assert await cache.get_many("t", MODEL, []) == []


async def test_keys_hold_tenant_model_and_hash_and_expire(
    redis_target: RedisTarget, prefix: str, raw_redis: RawRedis
) -> None:
    cache = RedisEmbeddingCache(redis_target, prefix=prefix, ttl_seconds=1)
    try:
        key = cache.key("acme", MODEL, "hello")
        digest = hashlib.sha256(f"acme\x1f{MODEL}\x1fhello".encode()).hexdigest()
        assert key == f"{prefix}emb:acme:{MODEL}:{digest}"
        await cache.put_many("acme", MODEL, ["hello"], [embedding(1)])
        assert 0 < await raw_redis.pttl(key) <= 1000
        assert await cache.get_many("acme", MODEL, ["hello"]) == [embedding(1)]
        await asyncio.sleep(1.1)
        assert await cache.get_many("acme", MODEL, ["hello"]) == [None]
    finally:
        await cache.close()


async def test_the_default_ttl_is_applied(cache: RedisEmbeddingCache, raw_redis: RawRedis) -> None:
    await cache.put_many("t", MODEL, ["x"], [embedding(3)])
    assert 3590 < await raw_redis.ttl(cache.key("t", MODEL, "x")) <= 3600


async def test_each_batch_is_one_round_trip(
    cache: RedisEmbeddingCache, round_trips: RoundTrips
) -> None:
    texts = [f"text {i}" for i in range(50)]
    items = [embedding(i) for i in range(50)]
    await cache.get_many("t", MODEL, ["warm up the connection"])
    before = round_trips.count
    await cache.put_many("t", MODEL, texts, items)
    assert round_trips.count - before == 1
    before = round_trips.count
    assert await cache.get_many("t", MODEL, texts) == items
    assert round_trips.count - before == 1


async def test_tenants_and_models_do_not_share_entries(cache: RedisEmbeddingCache) -> None:
    await cache.put_many("tenant-a", MODEL, ["same text"], [embedding(1)])
    await cache.put_many("tenant-a", "other-model", ["same text"], [embedding(2)])
    assert await cache.get_many("tenant-b", MODEL, ["same text"]) == [None]
    assert await cache.get_many("tenant-a", MODEL, ["same text"]) == [embedding(1)]
    assert await cache.get_many("tenant-a", "other-model", ["same text"]) == [embedding(2)]
    # A separator inside a name cannot make two different triples collide.
    assert cache.key("a:b", "c", "t") != cache.key("a", "b:c", "t")


async def test_an_unreadable_value_is_a_miss(
    cache: RedisEmbeddingCache, raw_redis: RawRedis
) -> None:
    await raw_redis.set(cache.key("t", MODEL, "x"), b"\xc1 not msgpack")
    assert await cache.get_many("t", MODEL, ["x"]) == [None]
    assert cache.stats().errors == 1


async def test_mismatched_lengths_are_a_bug(cache: RedisEmbeddingCache) -> None:
    with pytest.raises(ValueError):
        await cache.put_many("t", MODEL, ["a", "b"], [embedding(1)])


async def test_an_unreachable_cache_answers_misses_quickly(closed_port_url: str) -> None:
    cache = RedisEmbeddingCache(closed_port_url, timeout=0.5, backoff_seconds=60)
    try:
        started = time.monotonic()
        assert await cache.get_many("t", MODEL, ["a", "b"]) == [None, None]
        await cache.put_many("t", MODEL, ["a"], [embedding(1)])  # dropped, not raised
        assert await cache.get_many("t", MODEL, ["c"]) == [None]
        assert time.monotonic() - started < 1.0
        assert cache.stats() == CacheStats(hits=0, misses=3, writes=0, errors=3)
    finally:
        await cache.close()


async def test_a_cache_rides_out_a_server_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    cache = RedisEmbeddingCache(server.start(), backoff_seconds=0.3)
    try:
        await cache.put_many("t", MODEL, ["a"], [embedding(1)])
        server.stop()
        assert await cache.get_many("t", MODEL, ["a"]) == [None]  # down: a miss, not a failure
        assert cache.stats().errors == 1
        await asyncio.to_thread(server.start)  # same URL, data back from the append-only file
        assert await cache.get_many("t", MODEL, ["a"]) == [None]  # still staying away
        await asyncio.sleep(0.35)
        assert await cache.get_many("t", MODEL, ["a"]) == [embedding(1)]
        assert cache.stats() == CacheStats(hits=1, misses=2, writes=1, errors=2)
    finally:
        await cache.close()
        server.stop()
