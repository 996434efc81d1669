"""DeadLetterStore on Redis: newest-first reads, XDEL, and the requeue as one Lua script.

The requeue must not let a newer change to the document lose to the old event it re-appends.
A newer change is visible in one of three places, all read inside the script, so no ingest
can land between the look and the append:

- the document's written record (the write side stores it after appending);
- its applied record (the projector's; covers a written record that was never stored, which
  the write side tolerates when Redis fails between its two round trips);
- the entries of the document stream the projector's group has not acknowledged: an event
  appended a moment ago whose written record is not stored yet. Only these need a scan:
  anything acknowledged was applied, and its applied record is newer than the dead letter.

The status hashes' names come from app/adapters/redis/doc_status.py, not repeated here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from app.adapters.redis.client import DurableStore, as_text, translated
from app.adapters.redis.doc_status import applied_key, written_key
from app.adapters.redis.replication import run_replicated
from app.adapters.redis.streams import EVENT_FIELD, EVENT_LOG, entries_of
from app.domain.events import Entry
from app.errors import EventLogError
from app.services.dead_letters import RequeueCommand, RequeueReply
from app.telemetry import metrics
from app.telemetry.schema import REDIS_APPEND, REDIS_READ
from app.telemetry.tracing import client_span

# KEYS: 1 dead-letter stream, 2 document stream, 3 written hash, 4 applied hash.
# ARGV: 1 dead letter id, 2 dead-lettered entry id, 3 doc id, 4 tenant, 5 event,
#       6 op, 7 version (upserts), 8 at, 9 group, 10 the doc id as the event's JSON spells
#       it (a cheap filter before decoding an entry), 11 scan limit, 12 event field name.
# Replies: {'gone'} | {'busy', scanned} | {'superseded', newer id} | {'requeued', new id}.
# Stream ids compare as (ms, seq) numbers: ms since the epoch fits a Lua double exactly.
_REQUEUE = """
local function parse(id)
  if type(id) ~= 'string' then return nil end
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if not ms then return nil end
  return {tonumber(ms), tonumber(seq)}
end
local function newer(a, b)
  return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2])
end

if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return {'gone'}
end
local after = parse(ARGV[2])

local function recorded(key)
  local current = redis.call('HGET', key, ARGV[3])
  if not current then return nil end
  local ok, record = pcall(cjson.decode, current)
  if not ok or type(record) ~= 'table' then return nil end
  local id = parse(record['event_id'])
  if id and newer(id, after) then return record['event_id'] end
  return nil
end

local newest = recorded(KEYS[3]) or recorded(KEYS[4])
if not newest then
  -- From the first entry the group has not acknowledged (or past the last it was given),
  -- but never from before the dead-lettered entry itself.
  local from = '(' .. ARGV[2]
  local pending = redis.pcall('XPENDING', KEYS[2], ARGV[9])
  if type(pending) == 'table' and not pending['err'] then
    if tonumber(pending[1]) > 0 then
      local first = parse(pending[2])
      if first and newer(first, after) then from = pending[2] end
    else
      for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
        local info = {}
        for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
        if info['name'] == ARGV[9] then
          local last = parse(info['last-delivered-id'])
          if last and newer(last, after) then from = '(' .. info['last-delivered-id'] end
        end
      end
    end
  end
  local limit = tonumber(ARGV[11])
  local scanned = 0
  while not newest do
    local rows = redis.call('XRANGE', KEYS[2], from, '+', 'COUNT', 100)
    for _, row in ipairs(rows) do
      scanned = scanned + 1
      if scanned > limit then return {'busy', tostring(scanned)} end
      local fields = row[2]
      for i = 1, #fields, 2 do
        if fields[i] == ARGV[12] and string.find(fields[i + 1], ARGV[10], 1, true) then
          local ok, event = pcall(cjson.decode, fields[i + 1])
          if ok and type(event) == 'table' and event['tenant'] == ARGV[4]
              and event['doc_id'] == ARGV[3] then
            newest = row[1]
          end
        end
      end
      if newest then break end
    end
    if #rows < 100 then break end
    from = '(' .. rows[#rows][1]
  end
end

if newest then
  redis.call('XDEL', KEYS[1], ARGV[1])
  return {'superseded', newest}
end
local id = redis.call('XADD', KEYS[2], '*', ARGV[12], ARGV[5])
local version = cjson.null
if ARGV[6] == 'upsert' then version = ARGV[7] end
-- The new entry is the stream's newest, so no stored record can be for a later one.
redis.call('HSET', KEYS[3], ARGV[3],
  cjson.encode({event_id = id, op = ARGV[6], version = version, at = tonumber(ARGV[8])}))
redis.call('XDEL', KEYS[1], ARGV[1])
return {'requeued', id}
"""


class RedisDeadLetters(DurableStore):
    """The dead-letter operations on one Redis, whose status hashes are under `prefix`."""

    @client_span(REDIS_READ, "redis", "XREVRANGE")
    async def newest_first(self, stream: str, *, end: str = "+", count: int) -> list[Entry]:
        with translated(EVENT_LOG, f"XREVRANGE {stream}"):
            rows: Sequence[tuple[Any, Any]] | None = await self._redis.xrevrange(
                stream, max=end, min="-", count=count
            )
        return entries_of(rows)

    async def delete(self, stream: str, entry_id: str) -> bool:
        with translated(EVENT_LOG, f"XDEL {stream}"):
            return bool(await self._redis.xdel(stream, entry_id))

    @client_span(REDIS_APPEND, "redis", "EVALSHA requeue")
    async def requeue(self, command: RequeueCommand, *, scan_limit: int) -> RequeueReply:
        keys = [
            command.letter_stream,
            command.stream,
            written_key(self._prefix, command.tenant),
            applied_key(self._prefix, command.index_id, command.tenant),
        ]
        args: list[Any] = [
            command.letter_id,
            command.after,
            command.doc_id,
            command.tenant,
            command.event,
            command.op,
            command.version or "",
            repr(command.at),
            command.group,
            msgspec.json.encode(command.doc_id),
            scan_limit,
            EVENT_FIELD,
        ]
        with translated(EVENT_LOG, f"requeue {command.letter_id} to {command.stream}"):
            # The requeued event is a document event like any other: replicas confirm it.
            reply = await run_replicated(self._redis, self._target, _REQUEUE, keys, args)
        outcome = as_text(reply[0])
        if outcome == "requeued":
            metrics.events_appended(command.stream, 1)
            return RequeueReply(outcome="requeued", event_id=as_text(reply[1]))
        if outcome == "superseded":
            return RequeueReply(outcome="superseded", event_id=as_text(reply[1]))
        if outcome == "gone":
            return RequeueReply(outcome="gone")
        if outcome == "busy":
            return RequeueReply(outcome="busy")
        raise EventLogError(f"the requeue script answered {reply!r}")
