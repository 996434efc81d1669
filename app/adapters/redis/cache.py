"""EmbeddingCache in Redis: one key per (tenant, model, text), with a TTL; never fails ingest.

The cache is an optimisation, never a dependency: when Redis cannot be reached, lookups
answer "miss" and writes are dropped (both counted as errors), so ingest and search go on
at embedder speed instead of failing. After a failure the cache stays out of the way for a
few seconds rather than paying a connect timeout on every batch. The event log on the same
Redis does fail loudly; that is where an outage is reported.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence

import msgspec
from redis.exceptions import RedisError

from app.adapters.redis.client import RedisTarget, close_client, fast_client, translated
from app.ports import CachedEmbedding, CacheStats
from app.telemetry import metrics
from app.telemetry.schema import (
    REDIS_CACHE_GET,
    REDIS_CACHE_PUT,
)
from app.telemetry.tracing import client_span

log = logging.getLogger(__name__)

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(CachedEmbedding)


class RedisEmbeddingCache:
    """Embeddings under `{prefix}emb:{tenant}:{model_id}:{hash}`, read with one MGET and
    written with one pipelined round trip of SET EX per batch."""

    def __init__(
        self,
        target: RedisTarget | str,
        *,
        prefix: str = "rag:",
        ttl_seconds: int = 7 * 86400,
        pool_size: int = 16,
        timeout: float = 1.0,
        backoff_seconds: float = 5.0,
    ) -> None:
        self._prefix = prefix
        self._ttl = ttl_seconds
        self._backoff = backoff_seconds
        self._redis = fast_client(target, pool_size=pool_size, timeout=timeout)
        self._skip_until = 0.0
        self._hits = self._misses = self._writes = self._errors = 0

    def key(self, tenant: str, model_id: str, text: str) -> str:
        # The tenant is in the key so one tenant cannot learn, from a fast answer, that
        # another embedded the same text. The hash covers tenant and model too, so a ':'
        # inside either cannot make two different triples share a key; the readable parts
        # are there for operators (SCAN by tenant or model).
        digest = hashlib.sha256(f"{tenant}\x1f{model_id}\x1f{text}".encode()).hexdigest()
        return f"{self._prefix}emb:{tenant}:{model_id}:{digest}"

    @client_span(REDIS_CACHE_GET, "redis", "MGET")
    async def get_many(
        self, tenant: str, model_id: str, texts: Sequence[str]
    ) -> list[CachedEmbedding | None]:
        if not texts:
            return []
        if self._skipping():
            self._misses += len(texts)
            self._errors += 1
            metrics.cache_lookups(0, len(texts))
            return [None] * len(texts)
        try:
            values = await self._redis.mget([self.key(tenant, model_id, t) for t in texts])
        except (RedisError, OSError) as exc:
            self._failed("read", exc)
            self._misses += len(texts)
            metrics.cache_lookups(0, len(texts))
            return [None] * len(texts)
        found = [self._decode(value) for value in values]
        hits = sum(item is not None for item in found)
        self._hits += hits
        self._misses += len(found) - hits
        metrics.cache_lookups(hits, len(found) - hits)
        return found

    @client_span(REDIS_CACHE_PUT, "redis", "SET")
    async def put_many(
        self, tenant: str, model_id: str, texts: Sequence[str], items: Sequence[CachedEmbedding]
    ) -> None:
        if len(texts) != len(items):
            raise ValueError(f"{len(texts)} texts but {len(items)} embeddings")
        if not texts or self._skipping():
            self._errors += bool(texts)
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for text, item in zip(texts, items, strict=True):
                    pipe.set(self.key(tenant, model_id, text), _ENCODER.encode(item), ex=self._ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("write", exc)
            return
        self._writes += len(texts)

    async def forget_many(self, tenant: str, model_id: str, texts: Sequence[str]) -> int:
        if not texts:
            return 0
        # Erasure must not be skipped quietly, unlike a lookup: errors reach the caller.
        with translated("embedding cache", f"DEL x{len(texts)}"):
            return int(await self._redis.delete(*{self.key(tenant, model_id, t) for t in texts}))

    def stats(self) -> CacheStats:
        return CacheStats(
            hits=self._hits, misses=self._misses, writes=self._writes, errors=self._errors
        )

    async def close(self) -> None:
        await close_client(self._redis)

    def _decode(self, value: bytes | str | None) -> CachedEmbedding | None:
        if value is None or isinstance(value, str):
            return None
        try:
            return _DECODER.decode(value)
        except msgspec.DecodeError:
            # Written by an incompatible build, or not by us: a miss; the next put replaces it.
            self._errors += 1
            return None

    def _skipping(self) -> bool:
        return time.monotonic() < self._skip_until

    def _failed(self, what: str, exc: BaseException) -> None:
        self._errors += 1
        self._skip_until = time.monotonic() + self._backoff
        log.warning(
            "embedding cache %s failed (%s); answering misses for %.0f s", what, exc, self._backoff
        )
