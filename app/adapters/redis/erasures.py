"""ErasureRecords in Redis: one JSON record per erasure in the hash `{prefix}erasures`.

Kept after completion as the record that the erasure was done (tenant, document id and when,
no text). The ids of those not complete are also in the set `{prefix}erasures:open`, so the
round that looks for work every few seconds reads only those.
"""

from __future__ import annotations

import msgspec

from app.adapters.redis.client import DurableStore, translated
from app.services.erasure import Erasure

ERASURES = "erasure records"  # how errors name this store
_DECODER = msgspec.json.Decoder(Erasure)


class RedisErasureRecords(DurableStore):
    """Erasure records; see app/services/erasure.py for who writes them when."""

    @property
    def key(self) -> str:
        return f"{self._prefix}erasures"

    @property
    def open_key(self) -> str:
        return f"{self._prefix}erasures:open"

    async def save(self, erasure: Erasure) -> None:
        with translated(ERASURES, "HSET"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.key, erasure.erasure_id, msgspec.json.encode(erasure))
                if erasure.phase == "complete":
                    pipe.srem(self.open_key, erasure.erasure_id)
                else:
                    pipe.sadd(self.open_key, erasure.erasure_id)
                await pipe.execute()

    async def load(self, erasure_id: str) -> Erasure | None:
        with translated(ERASURES, "HGET"):
            raw = await self._redis.hget(self.key, erasure_id)
        return None if raw is None else _DECODER.decode(raw)

    async def open_ones(self) -> list[Erasure]:
        with translated(ERASURES, "SMEMBERS+HMGET"):
            ids = list(await self._redis.smembers(self.open_key))
            rows = await self._redis.hmget(self.key, ids) if ids else []
        found = [_DECODER.decode(raw) for raw in rows if raw is not None]
        return sorted((e for e in found if e.phase != "complete"), key=lambda e: e.requested_at)
