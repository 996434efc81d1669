"""Writes replicas must confirm: a script, then Redis `WAIT` on the same connection.

Replication is asynchronous: a primary that dies before its replicas received a write takes
the write with it, and a failover promotes a replica without it. `WAIT n timeout` blocks
until n replicas acknowledged everything *this connection* wrote, so it must run on the
connection that ran the write: redis-py's pools hand each command any free connection, and
WAIT on another one returns at once, confirming nothing. Hence one connection is held for
the script and the WAIT. The script makes the write atomic (all of a request's events or
none), so a retry repeats it whole.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    ConnectionError,
    MovedError,
    RedisError,
    ResponseError,
    TimeoutError,
)

from app.adapters.redis.client import BoundedCluster, RedisClient, RedisTarget
from app.errors import NotReplicated


async def run_replicated(
    client: RedisClient,
    target: RedisTarget,
    script: str,
    keys: Sequence[str],
    args: Sequence[Any],
    *,
    replicated: bool = True,
) -> Any:
    """The script's reply, once `target.min_replicas` replicas confirmed its writes (or at
    once when that is 0 or `replicated` is False). NotReplicated when fewer confirmed within
    `target.replica_timeout_ms`: the writes are on the primary and may or may not survive
    a failover. redis-py errors pass through for the caller to translate."""
    wanted = target.min_replicas if replicated else 0
    if wanted == 0:
        return await client.eval(script, len(keys), *keys, *args)
    try:
        if isinstance(client, RedisCluster):
            reply, confirmed = await _on_slot_owner(client, target, script, keys, args)
        else:
            reply, confirmed = await _on_one_connection(client, target, script, keys, args)
    except ResponseError as exc:
        if _DEMOTED not in str(exc):
            raise
        # The primary became a replica between the script and the WAIT (a failover, a
        # switchover): the write is there and may or may not be kept by the new primary.
        reply, confirmed = None, 0
    if confirmed < wanted:
        raise NotReplicated(
            f"written to the Redis primary, but only {confirmed} of {wanted} replicas "
            f"confirmed within {target.replica_timeout_ms} ms, so a failover may or may not "
            "keep it; retrying is safe (ingest is idempotent by content version)",
            confirmed=confirmed,
            wanted=wanted,
        )
    return reply


# WAIT's refusal on a node that is a replica now; the connection is dropped with it, so the
# next one asks the Sentinels (or the cluster) for the primary again.
_DEMOTED = "WAIT cannot be used with replica instances"


async def _on_one_connection(
    client: Redis, target: RedisTarget, script: str, keys: Sequence[str], args: Sequence[Any]
) -> tuple[Any, int]:
    # client() borrows one connection of the pool for its lifetime; aclose() returns it.
    one = client.client()
    try:
        reply = await one.eval(script, len(keys), *keys, *args)
        confirmed = await one.execute_command(  # type: ignore[no-untyped-call]
            "WAIT", target.min_replicas, target.replica_timeout_ms
        )
    except ResponseError as exc:
        if _DEMOTED in str(exc) and one.connection is not None:
            await one.connection.disconnect()
        raise
    finally:
        await one.aclose()
    return reply, int(confirmed)


async def _on_slot_owner(
    client: RedisCluster,
    target: RedisTarget,
    script: str,
    keys: Sequence[str],
    args: Sequence[Any],
) -> tuple[Any, int]:
    # The cluster client would send WAIT to every primary and add up the answers; it must go
    # to the primary owning the keys' slot, on the connection that ran the script.
    await client.initialize()
    async with client.slot() if isinstance(client, BoundedCluster) else contextlib.nullcontext():
        return await _on_node(client, target, script, keys, args)


async def _on_node(
    client: RedisCluster,
    target: RedisTarget,
    script: str,
    keys: Sequence[str],
    args: Sequence[Any],
) -> tuple[Any, int]:
    node = client.get_node_from_key(keys[0])
    if node is None:
        raise ConnectionError(f"no Redis Cluster node owns the slot of {keys[0]!r}")
    connection = node.acquire_connection()
    try:
        # Two round trips rather than one pipelined pair: a script that fails leaves no
        # unread WAIT reply on a connection going back to the pool.
        await connection.send_packed_command(
            connection.pack_command("EVAL", script, len(keys), *keys, *args)
        )
        reply = await node.parse_response(connection, "EVAL")
        await connection.send_packed_command(
            connection.pack_command("WAIT", target.min_replicas, target.replica_timeout_ms)
        )
        confirmed = await node.parse_response(connection, "WAIT")
    except (MovedError, ConnectionError, TimeoutError, OSError, ResponseError) as exc:
        if isinstance(exc, ResponseError) and _DEMOTED not in str(exc):
            raise
        # The slot moved or its primary went away (a failover): learn the new layout for
        # the next request; this one fails with a 503.
        await connection.disconnect()
        with contextlib.suppress(RedisError, OSError):
            await client.nodes_manager.initialize()
        raise
    finally:
        node.release(connection)
    return reply, int(confirmed)
