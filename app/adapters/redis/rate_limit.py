"""Per-key token buckets in Redis, each take one atomic Lua script; fails open on an outage.

A bucket holds up to `burst` tokens and refills at `rate` tokens a second; a request takes
one. State is a hash {tokens, at} under `{prefix}rl:{key_id}`, expiring once it would be
full again, so idle keys cost nothing. The script reads the clock from Redis (TIME), so API
replicas with skewed clocks share one bucket correctly.

Redis unreachable: requests are let through (fail-open) and counted, with a warning at most
every few seconds. A limiter that failed closed would turn a Redis blip into a full outage
of search, which reads nothing from Redis otherwise; abuse during an outage is bounded by
RAG_MAX_BODY_BYTES and the other request limits, not by this.
"""

from __future__ import annotations

import logging
import math
import time

from redis.exceptions import RedisError

from app.adapters.redis.client import RedisTarget, close_client, fast_client
from app.ports import RateDecision

log = logging.getLogger(__name__)

_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local retry = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry = (cost - tokens) / rate
end
local full_in = (burst - tokens) / rate
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
  'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(full_in * 1000) + 1000)
return {allowed, string.format('%.6f', tokens), string.format('%.6f', retry),
  string.format('%.6f', full_in)}
"""


class RedisRateLimiter:
    """The RateLimiter port: one Lua token bucket per key."""

    def __init__(
        self,
        target: RedisTarget | str,
        *,
        prefix: str = "rag:",
        pool_size: int = 16,
        timeout: float = 0.5,
        warn_every_seconds: float = 10.0,
    ) -> None:
        self._prefix = prefix
        # Short timeouts and no retries: the limiter must never be what makes a request slow.
        self._redis = fast_client(target, pool_size=pool_size, timeout=timeout)
        self._script = self._redis.register_script(_TOKEN_BUCKET)
        self._warn_every = warn_every_seconds
        self._warned = -math.inf
        self.failed_open = 0  # requests let through because Redis did not answer

    def key(self, key_id: str) -> str:
        return f"{self._prefix}rl:{key_id}"

    async def take(self, key_id: str, *, rate: float, burst: int, cost: int = 1) -> RateDecision:
        try:
            raw = await self._script(keys=[self.key(key_id)], args=[rate, burst, cost])
            allowed, tokens, retry, full_in = (
                int(raw[0]),
                float(raw[1]),
                float(raw[2]),
                float(raw[3]),
            )
        except (RedisError, OSError, ValueError, IndexError, TypeError) as exc:
            self.failed_open += 1
            now = time.monotonic()
            if now - self._warned >= self._warn_every:
                self._warned = now
                log.warning(
                    "rate limiter unavailable, letting requests through (%d so far): %s",
                    self.failed_open,
                    exc,
                )
            return RateDecision(
                allowed=True, limit=burst, remaining=burst, reset_seconds=0, retry_after_seconds=0
            )
        return RateDecision(
            allowed=bool(allowed),
            limit=burst,
            remaining=max(0, math.floor(tokens)),
            reset_seconds=full_in,
            retry_after_seconds=retry,
        )

    async def close(self) -> None:
        await close_client(self._redis)
