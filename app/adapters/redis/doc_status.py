"""DocStatusStore in Redis: one hash per tenant for each side, updated only forwards.

`{prefix}docs:{tenant}` maps doc id -> Written (set by the write side);
`{prefix}applied:{index_id}:{tenant}` maps doc id -> Applied (set by the projector).
Values are JSON, readable with `redis-cli HGET` during an incident.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import msgspec

from app.adapters.redis.client import DurableStore, as_text, translated
from app.adapters.redis.replication import run_replicated
from app.domain.doc_status import Applied, Written
from app.telemetry.schema import (
    REDIS_STATUS,
)
from app.telemetry.tracing import client_span

T = TypeVar("T")

# Sets each field only if the stored record is for an earlier (or the same) stream entry, so
# two writers racing, or a redelivered old event, can never move a document's record back;
# with an expected entry id, only if the stored record is for exactly that entry (a
# compare-and-set: app/services/projector.py adopts the points of the record it read, and must not
# adopt them if another writer replaced that record meanwhile). Stream ids are compared as
# (ms, seq) numbers: ms since the epoch fits a Lua double exactly.
# ARGV: field, entry id, expected entry id or "", value, ...; returns the fields stored.
_SET_IF_NEWER = """
local function key(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local stored = {}
for i = 1, #ARGV, 4 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  local expected = ARGV[i + 2]
  local write = true
  local current_id = nil
  if current then
    local ok, decoded = pcall(cjson.decode, current)
    if ok and type(decoded) == 'table' and type(decoded['event_id']) == 'string' then
      current_id = decoded['event_id']
    end
  end
  if expected ~= '' then
    write = current_id == expected
  elseif current_id then
    local new_ms, new_seq = key(ARGV[i + 1])
    local old_ms, old_seq = key(current_id)
    if old_ms and (old_ms > new_ms or (old_ms == new_ms and old_seq > new_seq)) then
      write = false
    end
  end
  if write then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 3])
    stored[#stored + 1] = ARGV[i]
  end
end
return stored
"""

# Removes a document's record from each hash, if the record is for exactly the given entry.
# KEYS: the hashes; ARGV: doc id, entry id, ...; returns how many records it removed.
_FORGET = """
local removed = 0
for _, key in ipairs(KEYS) do
  for i = 1, #ARGV, 2 do
    local current = redis.call('HGET', key, ARGV[i])
    if current then
      local ok, decoded = pcall(cjson.decode, current)
      if ok and type(decoded) == 'table' and decoded['event_id'] == ARGV[i + 1] then
        removed = removed + redis.call('HDEL', key, ARGV[i])
      end
    end
  end
end
return removed
"""

_ENCODER = msgspec.json.Encoder()
STATUS_STORE = "status store"  # how errors name this store


def written_key(prefix: str, tenant: str) -> str:
    """The hash of a tenant's written records (app/adapters/redis/dead_letters.py writes it too)."""
    return f"{prefix}docs:{tenant}"


def applied_key(prefix: str, index_id: str, tenant: str) -> str:
    """The hash of a tenant's applied records for one index."""
    return f"{prefix}applied:{index_id}:{tenant}"


def _decode(raw: bytes | str | None, type_: type[T]) -> T | None:
    if raw is None:
        return None
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.DecodeError:
        # Written by an incompatible build: treat the document as unknown on this side.
        return None


class RedisDocStatus(DurableStore):
    """The two per-document records in Redis hashes; see app/domain/doc_status.py."""

    def written_key(self, tenant: str) -> str:
        return written_key(self._prefix, tenant)

    def applied_key(self, index_id: str, tenant: str) -> str:
        return applied_key(self._prefix, index_id, tenant)

    @client_span(REDIS_STATUS, "redis", "HMGET")
    async def written(self, tenant: str, doc_ids: Sequence[str]) -> list[Written | None]:
        if not doc_ids:
            return []
        with translated(STATUS_STORE, "HMGET written"):
            values = await self._redis.hmget(self.written_key(tenant), list(doc_ids))
        return [_decode(v, Written) for v in values]

    @client_span(REDIS_STATUS, "redis", "HMGET")
    async def applied(
        self, index_id: str, tenant: str, doc_ids: Sequence[str]
    ) -> list[Applied | None]:
        if not doc_ids:
            return []
        with translated(STATUS_STORE, "HMGET applied"):
            values = await self._redis.hmget(self.applied_key(index_id, tenant), list(doc_ids))
        return [_decode(v, Applied) for v in values]

    @client_span(REDIS_STATUS, "redis", "HMGET")
    async def both(
        self, index_id: str, tenant: str, doc_ids: Sequence[str]
    ) -> list[tuple[Written | None, Applied | None]]:
        if not doc_ids:
            return []
        with translated(STATUS_STORE, "HMGET written+applied"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hmget(self.written_key(tenant), list(doc_ids))
                pipe.hmget(self.applied_key(index_id, tenant), list(doc_ids))
                written, applied = await pipe.execute()
        return [
            (_decode(w, Written), _decode(a, Applied))
            for w, a in zip(written, applied, strict=True)
        ]

    @client_span(REDIS_STATUS, "redis", "HSCAN")
    async def scan_written(
        self, tenant: str, *, cursor: int, count: int
    ) -> tuple[int, dict[str, Written | None]]:
        return await self._scan(self.written_key(tenant), cursor, count, Written)

    @client_span(REDIS_STATUS, "redis", "HSCAN")
    async def scan_applied(
        self, index_id: str, tenant: str, *, cursor: int, count: int
    ) -> tuple[int, dict[str, Applied | None]]:
        return await self._scan(self.applied_key(index_id, tenant), cursor, count, Applied)

    async def _scan(
        self, key: str, cursor: int, count: int, type_: type[T]
    ) -> tuple[int, dict[str, T | None]]:
        with translated(STATUS_STORE, f"HSCAN {key}"):
            after, found = await self._redis.hscan(key, cursor, count=count)
        assert isinstance(found, dict)  # a list only with NOVALUES
        return int(after), {as_text(doc_id): _decode(raw, type_) for doc_id, raw in found.items()}

    async def record_written(self, tenant: str, records: Mapping[str, Written]) -> None:
        await self._store(self.written_key(tenant), records)

    async def record_applied(
        self,
        index_id: str,
        tenant: str,
        records: Mapping[str, Applied],
        *,
        expect: Mapping[str, str] | None = None,
    ) -> set[str]:
        return await self._store(self.applied_key(index_id, tenant), records, expect)

    async def adopt_applied(self, index_id: str, source: str, tenants: Sequence[str]) -> None:
        if not tenants:
            return
        with translated(STATUS_STORE, "adopt applied records"):
            async with self._redis.pipeline(transaction=True) as pipe:
                for tenant in tenants:
                    pipe.delete(self.applied_key(index_id, tenant))
                    pipe.copy(self.applied_key(source, tenant), self.applied_key(index_id, tenant))
                    pipe.delete(self.applied_key(source, tenant))
                await pipe.execute()

    async def forget(
        self, index_ids: Sequence[str], tenant: str, records: Mapping[str, str]
    ) -> int:
        if not records:
            return 0
        keys = [self.written_key(tenant), *(self.applied_key(i, tenant) for i in index_ids)]
        args = [part for doc_id, event_id in records.items() for part in (doc_id, event_id)]
        with translated(STATUS_STORE, f"forget {len(records)} documents"):
            return int(await self._redis.eval(_FORGET, len(keys), *keys, *args))

    async def drop_applied(self, index_id: str, tenants: Sequence[str]) -> None:
        if not tenants:
            return
        with translated(STATUS_STORE, "drop applied records"):
            await self._redis.delete(*(self.applied_key(index_id, t) for t in tenants))

    @client_span(REDIS_STATUS, "redis", "HSET")
    async def _store(
        self,
        key: str,
        records: Mapping[str, Written | Applied],
        expect: Mapping[str, str] | None = None,
    ) -> set[str]:
        if not records:
            return set()
        expect = expect or {}
        args: list[Any] = []
        for doc_id, record in records.items():
            args += [doc_id, record.event_id, expect.get(doc_id, ""), _ENCODER.encode(record)]
        with translated(STATUS_STORE, f"set-if-newer {key}"):
            # Replicated like the events (RAG_REDIS_MIN_REPLICAS): during a switchover the old
            # primary takes writes for a few seconds more and then drops them, so an applied
            # record stored there while the entry's XACK went to the new primary would leave
            # the document "pending" for ever (tests/e2e/test_redis_failover.py found it).
            stored = await run_replicated(self._redis, self._target, _SET_IF_NEWER, [key], args)
        return {as_text(field) for field in stored or []}
