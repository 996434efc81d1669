"""Lease in Redis: `{prefix}lease:{name}` set only if absent, expiring on its own."""

from __future__ import annotations

from app.adapters.redis.client import RedisTarget, close_client, durable_client, translated

LEASE_STORE = "lease store"  # how errors name this store


class RedisLease:
    """Leases of one deployment (its key prefix); see app/ports.py Lease."""

    def __init__(
        self, target: RedisTarget | str, *, prefix: str = "rag:", pool_size: int = 2
    ) -> None:
        self._prefix = prefix
        self._redis = durable_client(
            target, pool_size=pool_size, socket_timeout=5.0, connect_timeout=2.0
        )

    def key(self, name: str) -> str:
        return f"{self._prefix}lease:{name}"

    async def take(self, name: str, *, holder: str, ttl_ms: int) -> bool:
        # The holder is stored only to say, when someone looks, which process has it.
        with translated(LEASE_STORE, f"SET {self.key(name)} NX"):
            return bool(await self._redis.set(self.key(name), holder, nx=True, px=ttl_ms))

    async def close(self) -> None:
        await close_client(self._redis)
