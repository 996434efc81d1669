"""LogRewriter on Redis: a stream rewritten in place, ids, groups and pending entries kept.

Why a rewrite and not XDEL: XDEL only flags an entry deleted inside its listpack node; the
bytes stay in memory, in RDB snapshots and in replicas' full syncs until every entry of the
node is gone. Compaction would free little, and an erased document's text would still be
there. So the kept entries are copied, under their own ids, to a new key beside the stream,
and one script switches the two:

1. Copy, a page at a time, while appends go on: each entry up to `upto` is kept, dropped or
   replaced as `choose` says; later ones are kept as they are.
2. Catch up on what was appended meanwhile, until little is left.
3. One script (atomic, so no append can fall between): copy the rest, give the copy the
   stream's last id and counters (XSETID, so new ids sort after every id ever handed out),
   recreate each consumer group at its position with its consumers, recreate each pending
   entry that was kept on the same consumer with its idle time and delivery count (XCLAIM
   FORCE), and RENAME the copy over the stream. A reader blocked on the stream is served
   from the new one.

Pending entries that were dropped are not recreated: a dropped entry was superseded by a
later one (compaction) or erased, and the consumer's XACK of it then counts nothing.
A lock key keeps rewrites of one stream from overlapping; a crash leaves the copy behind,
and the next rewrite deletes it first.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from redis.asyncio.cluster import RedisCluster

from app.adapters.redis.client import (
    RedisTarget,
    as_text,
    close_client,
    durable_client,
    translated,
)
from app.adapters.redis.replication import run_replicated
from app.adapters.redis.streams import EVENT_FIELD, EVENT_LOG, entries_of
from app.domain.events import Entry
from app.domain.records import id_key
from app.errors import EventLogError, InvalidRequest
from app.ports import Decision, RewriteReport

# Entries a round trip reads and copies: small, because each page is parsed on the event
# loop of a process that may be serving searches (docs/benchmarks.md, "Compaction").
_PAGE = 250
# Catch-up rounds before the switch; the switch script copies whatever is still left.
_CATCH_UP_ROUNDS = 5
_CATCH_UP_DONE = 200  # entries a round may leave for the switch
_LOCK_MS = 15_000
_AOF_REWRITE_SECONDS = 120

_SWITCH = """
local src, dst = KEYS[1], KEYS[2]
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function later(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am > bm or (am == bm and as > bs)
end
local function fields(row)
  local out = {}
  for i = 1, #row, 2 do out[row[i]] = row[i + 1] end
  return out
end
if redis.call('GET', KEYS[3]) ~= ARGV[3] then
  return redis.error_reply('LOCKLOST the rewrite lock of ' .. src .. ' was lost')
end
if redis.call('EXISTS', src) == 0 then
  return redis.error_reply('NOSTREAM ' .. src .. ' vanished during its rewrite')
end
local tail = redis.call('XRANGE', src, '(' .. ARGV[1], '+')
for _, e in ipairs(tail) do
  local cmd = {'XADD', dst, e[1]}
  for _, v in ipairs(e[2]) do cmd[#cmd + 1] = v end
  redis.call(unpack(cmd))
end
if redis.call('EXISTS', dst) == 0 then
  -- Everything was dropped: an empty stream still carries the groups and the last id.
  redis.call('XADD', dst, 'MAXLEN', '0', '0-1', 'x', 'x')
end
local meta = fields(redis.call('XINFO', 'STREAM', src))
local maxdel = meta['max-deleted-entry-id']
if later(ARGV[2], maxdel) then maxdel = ARGV[2] end
redis.call('XSETID', dst, meta['last-generated-id'], 'ENTRIESADDED', meta['entries-added'],
  'MAXDELETEDID', maxdel)
local carried, dropped = 0, 0
local groups = redis.call('XINFO', 'GROUPS', src)
for _, row in ipairs(groups) do
  local g = fields(row)
  if g['entries-read'] then
    redis.call('XGROUP', 'CREATE', dst, g['name'], g['last-delivered-id'],
      'ENTRIESREAD', g['entries-read'])
  else
    redis.call('XGROUP', 'CREATE', dst, g['name'], g['last-delivered-id'])
  end
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', src, g['name'])) do
    redis.call('XGROUP', 'CREATECONSUMER', dst, g['name'], fields(c)['name'])
  end
  if g['pending'] > 0 then
    for _, p in ipairs(redis.call('XPENDING', src, g['name'], '-', '+', g['pending'])) do
      if #redis.call('XRANGE', dst, p[1], p[1]) == 1 then
        redis.call('XCLAIM', dst, g['name'], p[2], 0, p[1], 'IDLE', p[3], 'RETRYCOUNT', p[4],
          'FORCE', 'JUSTID')
        carried = carried + 1
      else
        dropped = dropped + 1
      end
    end
  end
end
redis.call('RENAME', dst, src)
redis.call('DEL', KEYS[3])
return {#tail, #groups, carried, dropped}
"""

# The lowest id any group still needs: each group's smallest pending id, else the first id
# after its position. Everything below it is acknowledged by every group.
_SETTLED = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function before(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
if redis.call('EXISTS', KEYS[1]) == 0 then return '0-0' end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return '0-0' end
local floor = nil
for _, row in ipairs(groups) do
  local g = {}
  for i = 1, #row, 2 do g[row[i]] = row[i + 1] end
  local need = g['last-delivered-id']
  local ms, seq = parse(need)
  need = ms .. '-' .. (seq + 1)
  if g['pending'] > 0 then
    local summary = redis.call('XPENDING', KEYS[1], g['name'])
    if before(summary[2], need) then need = summary[2] end
  end
  if floor == nil or before(need, floor) then floor = need end
end
return floor
"""

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisLogRewriter:
    """Rewrites streams of one Redis topology; see the module doc."""

    def __init__(self, target: RedisTarget | str, *, page: int = _PAGE) -> None:
        self._target = RedisTarget.of(target)
        self._page = page
        self._redis = durable_client(
            self._target, pool_size=4, socket_timeout=30.0, connect_timeout=2.0
        )

    async def rewrite(
        self,
        stream: str,
        choose: Callable[[Entry], Decision],
        *,
        upto: str,
        on_page: Callable[[RewriteReport], None] | None = None,
    ) -> RewriteReport:
        copy, lock = f"{stream}:rewrite", f"{stream}:rewrite-lock"
        token = uuid.uuid4().hex
        started = time.monotonic()
        report = RewriteReport(stream=stream)
        with translated(EVENT_LOG, f"SET {lock} NX"):
            if not await self._redis.set(lock, token, nx=True, px=_LOCK_MS):
                raise InvalidRequest(
                    f"{stream} is being rewritten (compaction or erasure); retry when it ends",
                    status=409,
                    code="rewrite_running",
                )
        try:
            with translated(EVENT_LOG, f"DEL {copy}"):
                await self._redis.delete(copy)
            last, max_dropped = "0-0", "0-0"
            rounds = 0
            while True:
                with translated(EVENT_LOG, f"XRANGE {stream}"):
                    rows: list[tuple[Any, Any]] = list(
                        await self._redis.xrange(
                            stream, min=f"({last}" if last != "0-0" else "-", count=self._page
                        )
                        or []
                    )
                if rows:
                    dropped = await self._copy(copy, rows, choose, upto, report)
                    if dropped is not None and id_key(dropped) > id_key(max_dropped):
                        max_dropped = dropped
                    last = as_text(rows[-1][0])
                    await self._extend(lock, token)
                    if on_page is not None:
                        on_page(report)
                if len(rows) < self._page:
                    # At the head: catch up on what came meanwhile, then switch.
                    rounds += 1
                    if len(rows) <= _CATCH_UP_DONE or rounds >= _CATCH_UP_ROUNDS:
                        break
            with translated(EVENT_LOG, f"rewrite switch {stream}"):
                tail, groups, carried, lost = await run_replicated(
                    self._redis,
                    self._target,
                    _SWITCH,
                    [stream, copy, lock],
                    [last, max_dropped, token],
                )
        except BaseException:
            await self._release(lock, token, copy)
            raise
        report.read += int(tail)
        report.kept += int(tail)
        report.groups = int(groups)
        report.pending_carried = int(carried)
        report.pending_dropped = int(lost)
        report.seconds = round(time.monotonic() - started, 3)
        return report

    async def _copy(
        self,
        copy: str,
        rows: list[tuple[Any, Any]],
        choose: Callable[[Entry], Decision],
        upto: str,
        report: RewriteReport,
    ) -> str | None:
        """Copy one page; returns the id of the last entry it dropped, if any."""
        limit = id_key(upto)
        dropped: str | None = None
        with translated(EVENT_LOG, f"XADD {copy}"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for (raw_id, fields), entry in zip(rows, entries_of(rows), strict=True):
                    report.read += 1
                    decision: Decision = "keep" if id_key(entry.id) > limit else choose(entry)
                    if decision == "drop":
                        report.dropped += 1
                        dropped = entry.id
                        continue
                    if decision == "keep":
                        report.kept += 1
                        pipe.xadd(copy, fields, id=raw_id)
                    else:
                        report.replaced += 1
                        pipe.xadd(copy, {EVENT_FIELD: decision}, id=raw_id)
                await pipe.execute()
        return dropped

    async def rewrite_persistence(self) -> str:
        if isinstance(self._redis, RedisCluster):
            return "not done on a Redis Cluster: run BGREWRITEAOF on the node owning the slot"
        try:
            with translated(EVENT_LOG, "INFO persistence"):
                info = await self._redis.info("persistence")
                if not int(info.get("aof_enabled", 0)):
                    return "no append-only file on the server"
                await self._redis.bgrewriteaof()
                deadline = time.monotonic() + _AOF_REWRITE_SECONDS
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    info = await self._redis.info("persistence")
                    if not int(info.get("aof_rewrite_in_progress", 0)) and not int(
                        info.get("aof_rewrite_scheduled", 0)
                    ):
                        status = str(info.get("aof_last_bgrewrite_status", "ok"))
                        return "append-only file rewritten" if status == "ok" else status
                return f"append-only file rewrite still running after {_AOF_REWRITE_SECONDS} s"
        except EventLogError as exc:  # BGREWRITEAOF renamed or refused (managed services)
            return f"append-only file not rewritten: {exc}"

    async def settled_below(self, stream: str) -> str:
        with translated(EVENT_LOG, f"XINFO GROUPS {stream}"):
            return as_text(await self._redis.eval(_SETTLED, 1, stream))

    async def _extend(self, lock: str, token: str) -> None:
        with translated(EVENT_LOG, f"PEXPIRE {lock}"):
            if not await self._redis.eval(_EXTEND, 1, lock, token, _LOCK_MS):
                raise InvalidRequest(
                    f"the rewrite lock {lock} expired; another rewrite may have started",
                    status=409,
                    code="rewrite_running",
                )

    async def _release(self, lock: str, token: str, copy: str) -> None:
        try:
            with translated(EVENT_LOG, f"release {lock}"):
                if await self._redis.eval(_RELEASE, 1, lock, token):
                    await self._redis.delete(copy)
        except Exception:  # the lock expires by itself; the next rewrite deletes the copy
            pass

    async def close(self) -> None:
        await close_client(self._redis)
