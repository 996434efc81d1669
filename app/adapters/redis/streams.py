"""EventLog on Redis Streams via redis.asyncio (Redis >= 7 or Valkey), errors translated."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff
from redis.exceptions import (
    ConnectionError,
    ResponseError,
)

from app.adapters.redis.client import (
    RedisClient,
    RedisTarget,
    as_text,
    close_client,
    durable_client,
    redis_client,
    translated,
)
from app.adapters.redis.replication import run_replicated
from app.domain.events import (
    ConsumerInfo,
    Entry,
    Event,
    GroupInfo,
    StoreMemory,
    decode_event,
    encode_event,
)
from app.errors import DependencyUnavailable, EventDecodeError, EventLogError
from app.telemetry import metrics
from app.telemetry.schema import (
    REDIS_ACK,
    REDIS_APPEND,
    REDIS_READ,
)
from app.telemetry.tracing import client_span

# Each entry holds one field; its value is the encoded event (see app/domain/events.py).
EVENT_FIELD = b"event"
EVENT_LOG = "event log"  # how errors name this store

_STREAM_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")
# How many XAUTOCLAIM pages one claim_idle call scans at most, so a huge pending list
# cannot hold the caller (or the server) for long.
_MAX_CLAIM_SCANS = 8


def _entry(entry_id: bytes | str, fields: Mapping[Any, Any] | None) -> Entry:
    eid = as_text(entry_id)
    if not fields:
        # The entry is still pending but was deleted (or trimmed) from the stream since.
        return Entry(id=eid, event=None, raw=b"", error="entry no longer in the stream")
    raw = fields.get(EVENT_FIELD)
    if raw is None:
        pairs = [[key, value] for key, value in fields.items()]
        return Entry(
            id=eid,
            event=None,
            raw=msgspec.msgpack.encode(pairs),
            error=f"entry has no {EVENT_FIELD.decode()!r} field (fields: "
            f"{sorted(as_text(key) for key in fields)})",
        )
    try:
        return Entry(id=eid, event=decode_event(raw), raw=raw, error=None)
    except EventDecodeError as exc:
        return Entry(id=eid, event=None, raw=raw, error=str(exc))


def entries_of(rows: Sequence[tuple[Any, Any]] | None) -> list[Entry]:
    """Entries from an XRANGE/XREVRANGE reply, each decoded (or kept raw with the error)."""
    return [_entry(entry_id, fields) for entry_id, fields in rows or ()]


def _read_reply(reply: Any) -> list[Entry]:
    # XREADGROUP over RESP2: [[stream, [(id, fields), ...]]], or [] when nothing came.
    if not reply:
        return []
    return entries_of(reply[0][1])


# XGROUP DELCONSUMER drops the consumer's pending entries with it, which would lose them
# for good: the check (nothing pending, idle long enough) and the delete run as one script,
# so a consumer that reads between a check and a delete cannot lose what it read.
_FORGET_CONSUMER = """
local rows = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, row in ipairs(rows) do
  local info = {}
  for i = 1, #row, 2 do info[row[i]] = row[i + 1] end
  if info['name'] == ARGV[2] then
    if tonumber(info['pending']) == 0 and tonumber(info['idle']) >= tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return 0
"""


# A request's events, appended as one atomic script so that a WAIT can follow on the same
# connection (app/adapters/redis/replication.py). ARGV: the field name, then the events.
_APPEND = """
local ids = {}
for i = 2, #ARGV do
  ids[i - 1] = redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[i])
end
return ids
"""


# INFO from a script: the script's key routes it (see RedisEventLog.memory).
_INFO_MEMORY = "return redis.call('INFO', 'memory')"


class RedisEventLog:
    """EventLog over one Redis topology: a bounded pool for ordinary commands, and one
    dedicated connection per consumer for blocking reads."""

    def __init__(
        self,
        target: RedisTarget | str,
        *,
        pool_size: int = 16,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
    ) -> None:
        self._target = RedisTarget.of(target)
        self._socket_timeout = socket_timeout
        self._connect_timeout = connect_timeout
        # A retried append whose first attempt did reach the server is appended twice:
        # harmless, since every consumer is idempotent.
        self._redis = durable_client(
            self._target,
            pool_size=pool_size,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
        )
        # consumer -> (client, the socket timeout it was made with)
        self._readers: dict[str, tuple[RedisClient, float]] = {}

    @client_span(REDIS_APPEND, "redis", "XADD")
    async def append(self, stream: str, event: Event, *, replicated: bool = True) -> str:
        (entry_id,) = await self.append_many(stream, [event], replicated=replicated)
        return entry_id

    @client_span(REDIS_APPEND, "redis", "EVAL XADD")
    async def append_many(
        self, stream: str, events: Sequence[Event], *, replicated: bool = True
    ) -> list[str]:
        if not events:
            return []
        # One script: a request's events are all appended or none, in one round trip (and a
        # WAIT on the same connection when replicas must confirm them).
        with translated(EVENT_LOG, f"XADD {stream} x{len(events)}"):
            ids = await run_replicated(
                self._redis,
                self._target,
                _APPEND,
                [stream],
                [EVENT_FIELD, *(encode_event(event) for event in events)],
                replicated=replicated,
            )
        metrics.events_appended(stream, len(ids))
        return [as_text(entry_id) for entry_id in ids]

    async def ensure_group(self, stream: str, group: str, *, start: str = "0") -> None:
        with translated(EVENT_LOG, f"XGROUP CREATE {stream} {group}"):
            try:
                await self._redis.xgroup_create(stream, group, id=start, mkstream=True)
            except ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):  # BUSYGROUP: it exists already
                    raise

    @client_span(REDIS_READ, "redis", "XREADGROUP")
    async def read_group(
        self, stream: str, group: str, consumer: str, *, count: int, block_ms: int
    ) -> list[Entry]:
        if block_ms <= 0:
            with translated(EVENT_LOG, f"XREADGROUP {stream} {group}"):
                reply = await self._redis.xreadgroup(group, consumer, {stream: ">"}, count=count)
            return _read_reply(reply)
        reader = await self._reader(consumer, block_ms)
        with translated(EVENT_LOG, f"XREADGROUP BLOCK {stream} {group}"):
            reply = await reader.xreadgroup(
                group, consumer, {stream: ">"}, count=count, block=block_ms
            )
        return _read_reply(reply)

    async def _reader(self, consumer: str, block_ms: int) -> RedisClient:
        """The consumer's own connection, with a socket timeout longer than the BLOCK.

        A blocking read parks its connection on the server for up to block_ms: taken from
        the shared pool it would starve appends, and under the pool's socket timeout an
        empty wait would look like an outage.
        """
        timeout = block_ms / 1000 + self._socket_timeout
        current = self._readers.get(consumer)
        if current is not None and current[1] >= timeout:
            return current[0]
        if current is not None:
            await current[0].aclose()
        client = redis_client(
            self._target,
            pool_size=1,
            socket_timeout=timeout,
            connect_timeout=self._connect_timeout,
            # Never re-issue a read that timed out: the server may have delivered entries
            # to the lost connection (they stay pending and come back via read_pending).
            retry=Retry(ConstantBackoff(0.05), retries=1, supported_errors=(ConnectionError,)),
            blocking=False,
        )
        self._readers[consumer] = (client, timeout)
        return client

    @client_span(REDIS_READ, "redis", "XREADGROUP")
    async def read_pending(
        self, stream: str, group: str, consumer: str, *, count: int, after: str = "0"
    ) -> list[Entry]:
        with translated(EVENT_LOG, f"XREADGROUP {stream} {group} pending"):
            reply = await self._redis.xreadgroup(group, consumer, {stream: after}, count=count)
        return _read_reply(reply)

    @client_span(REDIS_READ, "redis", "XAUTOCLAIM")
    async def claim_idle(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[Entry]:
        claimed: list[Entry] = []
        cursor: bytes | str = "0-0"
        with translated(EVENT_LOG, f"XAUTOCLAIM {stream} {group}"):
            for _ in range(_MAX_CLAIM_SCANS):
                # Redis >= 7 replies [next cursor, entries, ids of deleted entries]; it drops
                # the deleted ones from the pending list itself.
                reply = await self._redis.xautoclaim(
                    stream, group, consumer, min_idle_ms, cursor, count=count - len(claimed)
                )
                cursor = reply[0]
                claimed.extend(entries_of(reply[1]))
                if len(claimed) >= count or as_text(cursor) == "0-0":
                    break
        return claimed

    @client_span(REDIS_ACK, "redis", "XACK")
    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with translated(EVENT_LOG, f"XACK {stream} {group}"):
            return int(await self._redis.xack(stream, group, *ids))

    def _strikes_key(self, stream: str, group: str) -> str:
        return f"{stream}:strikes:{group}"

    @client_span(REDIS_ACK, "redis", "HINCRBY")
    async def add_strikes(
        self, stream: str, group: str, ids: Sequence[str], delta: int = 1
    ) -> dict[str, int]:
        if not ids:
            return {}
        key = self._strikes_key(stream, group)
        with translated(EVENT_LOG, f"HINCRBY {key}"):
            async with self._redis.pipeline(transaction=True) as pipe:
                for entry_id in ids:
                    pipe.hincrby(key, entry_id, delta)
                counts = await pipe.execute()
        return {entry_id: int(n) for entry_id, n in zip(ids, counts, strict=True)}

    @client_span(REDIS_READ, "redis", "HMGET")
    async def strikes(self, stream: str, group: str, ids: Sequence[str]) -> dict[str, int]:
        if not ids:
            return {}
        key = self._strikes_key(stream, group)
        with translated(EVENT_LOG, f"HMGET {key}"):
            values = await self._redis.hmget(key, list(ids))
        return {
            entry_id: int(v)
            for entry_id, v in zip(ids, values, strict=True)
            if v is not None and int(v) > 0
        }

    @client_span(REDIS_ACK, "redis", "HDEL")
    async def clear_strikes(self, stream: str, group: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        key = self._strikes_key(stream, group)
        with translated(EVENT_LOG, f"HDEL {key}"):
            await self._redis.hdel(key, *ids)

    @client_span(REDIS_READ, "redis", "XRANGE")
    async def range(
        self, stream: str, *, start: str = "-", end: str = "+", count: int = 1000
    ) -> list[Entry]:
        with translated(EVENT_LOG, f"XRANGE {stream}"):
            rows = await self._redis.xrange(stream, min=start, max=end, count=count)
        return entries_of(rows)

    @client_span(REDIS_READ, "redis", "XRANGE")
    async def get(self, stream: str, entry_id: str) -> Entry | None:
        if not _STREAM_ID.match(entry_id):
            return None
        with translated(EVENT_LOG, f"XRANGE {stream} {entry_id}"):
            rows = await self._redis.xrange(stream, min=entry_id, max=entry_id, count=1)
        found = entries_of(rows)
        return found[0] if found else None

    async def length(self, stream: str) -> int:
        with translated(EVENT_LOG, f"XLEN {stream}"):
            return int(await self._redis.xlen(stream))

    async def trim_to_length(self, stream: str, max_entries: int) -> int:
        with translated(EVENT_LOG, f"XTRIM {stream} MAXLEN"):
            # Exact (`=`), not `~`: the approximate form only drops whole nodes and so keeps
            # up to a node's worth (stream-node-max-entries, 100) more than the bound says.
            return int(await self._redis.xtrim(stream, maxlen=max_entries, approximate=False))

    async def trim_before(self, stream: str, entry_id: str) -> int:
        with translated(EVENT_LOG, f"XTRIM {stream} MINID"):
            return int(await self._redis.xtrim(stream, minid=entry_id, approximate=False))

    async def clock_ms(self) -> int:
        with translated(EVENT_LOG, "TIME"):
            seconds, micros = await self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def memory_usage(self, stream: str) -> int:
        with translated(EVENT_LOG, f"MEMORY USAGE {stream}"):
            # SAMPLES 0: every node counted. The default (5) extrapolates from the oldest
            # few nodes, which says little about a stream whose entries vary in size.
            used = await self._redis.memory_usage(stream, samples=0)
        return 0 if used is None else int(used)

    async def memory(self, stream: str) -> StoreMemory:
        with translated(EVENT_LOG, "INFO memory"):
            # Through a script that names the stream, so that on a cluster the answer is that
            # of the shard holding it (a plain INFO would go to every node).
            raw = await self._redis.eval(_INFO_MEMORY, 1, stream)
        fields = dict(line.split(":", 1) for line in as_text(raw).splitlines() if ":" in line)
        return StoreMemory(
            used_bytes=int(fields["used_memory"]),
            max_bytes=int(fields.get("maxmemory", "0")),
            policy=fields.get("maxmemory_policy", "unknown"),
        )

    async def group_info(self, stream: str, group: str) -> GroupInfo | None:
        with translated(EVENT_LOG, f"XINFO GROUPS {stream}"):
            try:
                groups = await self._redis.xinfo_groups(stream)
            except ResponseError as exc:
                if "no such key" in str(exc).lower():
                    return None
                raise
        for info in groups:
            if as_text(info["name"]) == group:
                lag = info.get("lag")
                return GroupInfo(
                    consumers=int(info["consumers"]),
                    pending=int(info["pending"]),
                    lag=None if lag is None else int(lag),
                    last_delivered=as_text(info["last-delivered-id"]),
                )
        return None

    async def consumers(self, stream: str, group: str) -> list[ConsumerInfo]:
        with translated(EVENT_LOG, f"XINFO CONSUMERS {stream} {group}"):
            try:
                rows = await self._redis.xinfo_consumers(stream, group)
            except ResponseError as exc:
                if "no such key" in str(exc).lower() or str(exc).startswith("NOGROUP"):
                    return []
                raise
        return [
            ConsumerInfo(
                name=as_text(row["name"]), pending=int(row["pending"]), idle_ms=int(row["idle"])
            )
            for row in rows
        ]

    async def forget_consumer(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int
    ) -> bool:
        with translated(EVENT_LOG, f"XGROUP DELCONSUMER {stream} {group} {consumer}"):
            try:
                removed = await self._redis.eval(
                    _FORGET_CONSUMER, 1, stream, group, consumer, min_idle_ms
                )
            except ResponseError as exc:
                if "no such key" in str(exc).lower() or "NOGROUP" in str(exc):
                    return False
                raise
        return bool(removed)

    async def trim_older_than(self, stream: str, seconds: float) -> int:
        with translated(EVENT_LOG, f"XTRIM {stream}"):
            # Entry ids carry the server's clock, so the cut-off is taken from it too:
            # the app host's clock may be skewed against the server's.
            now_s, now_us = await self._redis.time()
            min_id = now_s * 1000 + now_us // 1000 - int(seconds * 1000)
            if min_id <= 0:
                return 0
            return int(await self._redis.xtrim(stream, minid=min_id, approximate=False))

    async def ping(self) -> bool:
        try:
            with translated(EVENT_LOG, "PING"):
                return bool(await self._redis.ping())
        except (DependencyUnavailable, EventLogError):
            return False

    async def close(self) -> None:
        readers = [client for client, _ in self._readers.values()]
        self._readers.clear()
        await asyncio.gather(*(client.aclose() for client in readers), return_exceptions=True)
        await close_client(self._redis)
