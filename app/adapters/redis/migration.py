"""Copies a deployment's keys from one Redis and prefix to another (a new prefix, a cluster).

The document stream is the source of truth, so moving a deployment to Redis Cluster (whose
prefix needs a hash tag) or to another server means copying it with its consumer groups, the
status hashes and the dead letters. Every type is copied in pages (XRANGE, HSCAN), never
whole (a DUMP of a large stream would block both servers and may not RESTORE across Redis and
Valkey versions). Run it with writers and workers stopped: what is appended during the copy
may be missed.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec

from app.adapters.redis.client import RedisClient, as_text
from app.adapters.redis.streams import EVENT_FIELD
from app.domain.events import EventDeadLettered, decode_event, encode_event
from app.errors import EventDecodeError, EventLogError

_PAGE = 1000
# Embeddings are a cache (the projector refills it) and rate-limit buckets live seconds:
# copying them would only take time.
_SKIPPED_BY_DEFAULT = ("emb:", "rl:")


class CopyReport(msgspec.Struct, kw_only=True):
    """What a copy did: keys by type, stream entries, consumer groups, keys left out."""

    keys: dict[str, int] = msgspec.field(default_factory=dict)
    entries: int = 0
    groups: int = 0
    skipped: int = 0
    letters_rewritten: int = 0


def _glob_escaped(prefix: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix)


async def _keys(client: RedisClient, prefix: str) -> AsyncIterator[str]:
    # On a cluster, scan_iter walks every primary.
    async for key in client.scan_iter(match=f"{_glob_escaped(prefix)}*", count=_PAGE):
        yield as_text(key)


async def copy_prefix(
    source: RedisClient,
    target: RedisClient,
    *,
    from_prefix: str,
    to_prefix: str,
    with_cache: bool = False,
) -> CopyReport:
    """Copy every key under `from_prefix` on `source` to `to_prefix` on `target`.
    EventLogError, before anything is written, if `target` holds a key under `to_prefix`."""
    async for key in _keys(target, to_prefix):
        raise EventLogError(
            f"the target already holds {key!r} under {to_prefix!r}: copy into an empty prefix "
            "(delete what is there, or choose another RAG_STREAM_PREFIX)"
        )
    report = CopyReport()
    renamed = {f"{from_prefix}documents": f"{to_prefix}documents"}
    async for key in _keys(source, from_prefix):
        suffix = key[len(from_prefix) :]
        if not with_cache and suffix.startswith(_SKIPPED_BY_DEFAULT):
            report.skipped += 1
            continue
        kind = as_text(await source.type(key))
        new = to_prefix + suffix
        if kind == "stream":
            await _copy_stream(source, target, key, new, renamed, report)
        elif kind == "hash":
            await _copy_hash(source, target, key, new)
        elif kind == "string":
            await _copy_string(source, target, key, new)
        elif kind == "none":  # expired or deleted since the scan
            continue
        else:
            raise EventLogError(f"{key!r} is a {kind}, which this service never writes")
        report.keys[kind] = report.keys.get(kind, 0) + 1
    return report


async def _copy_string(source: RedisClient, target: RedisClient, key: str, new: str) -> None:
    value = await source.get(key)
    ttl_ms = int(await source.pttl(key))
    if value is not None:
        await target.set(new, value, px=ttl_ms if ttl_ms > 0 else None)


async def _copy_hash(source: RedisClient, target: RedisClient, key: str, new: str) -> None:
    cursor: Any = 0
    page: Any
    while True:
        cursor, page = await source.hscan(key, cursor, count=_PAGE)
        if page:
            await target.hset(new, mapping=page)
        if int(cursor) == 0:
            break
    ttl_ms = int(await source.pttl(key))
    if ttl_ms > 0:
        await target.pexpire(new, ttl_ms)


async def _copy_stream(
    source: RedisClient,
    target: RedisClient,
    key: str,
    new: str,
    renamed: Mapping[str, str],
    report: CopyReport,
) -> None:
    """Entries with their ids, the last id, and each consumer group. A group's pending
    entries cannot be carried over (their consumers are gone anyway): the group restarts
    just before its oldest pending entry, so those are delivered again, as after a crash."""
    start, copied = "-", 0
    while True:
        rows: list[tuple[Any, Any]] = (
            await source.xrange(key, min=start, max="+", count=_PAGE) or []
        )
        for entry_id, fields in rows:
            await target.xadd(new, _rewritten(fields, renamed, report), id=entry_id)
        copied += len(rows)
        if len(rows) < _PAGE:
            break
        start = "(" + as_text(rows[-1][0])
    report.entries += copied
    if copied == 0:
        # Every entry trimmed or deleted: the stream (and its groups) exist all the same.
        await target.xgroup_create(new, "_", id="0", mkstream=True)
        await target.xgroup_destroy(new, "_")
    # Ids keep growing from where the source's did, even past deleted entries.
    info = await source.xinfo_stream(key)
    await target.execute_command("XSETID", new, as_text(info["last-generated-id"]))
    for group in await source.xinfo_groups(key):
        name = as_text(group["name"])
        restart = as_text(group["last-delivered-id"])
        pending = await source.xpending(key, name)
        if int(pending["pending"]):
            restart = _before(as_text(pending["min"]))
        await target.xgroup_create(new, name, id=restart)
        report.groups += 1


def _before(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    if int(seq) > 0:
        return f"{ms}-{int(seq) - 1}"
    return f"{int(ms) - 1}-{2**64 - 1}" if int(ms) > 0 else "0-0"


def _rewritten(
    fields: dict[Any, Any], renamed: Mapping[str, str], report: CopyReport
) -> dict[Any, Any]:
    """A dead letter names the stream its entry came from: under the new prefix it must name
    the new stream, or requeueing it would be refused (or cross slots on a cluster)."""
    raw = fields.get(EVENT_FIELD)
    if raw is None:
        return fields
    try:
        event = decode_event(raw)
    except EventDecodeError:
        return fields
    if isinstance(event, EventDeadLettered) and event.source_stream in renamed:
        report.letters_rewritten += 1
        moved = msgspec.structs.replace(event, source_stream=renamed[event.source_stream])
        return {**fields, EVENT_FIELD: encode_event(moved)}
    return fields
