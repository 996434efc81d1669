"""How this service talks to Redis: which topology, one client factory, one translation of errors.

A `RedisTarget` names one server (`REDIS_URL`), the primary a set of Sentinels currently names,
or a Redis Cluster; every adapter gets its clients from `redis_client`, so each finds a new
primary after a failover by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ConstantBackoff, NoBackoff
from redis.exceptions import (
    AuthenticationError,
    ConnectionError,
    RedisError,
    ResponseError,
    TimeoutError,
)

from app.errors import DependencyUnavailable, EventLogError, NotFound

RETRY_AFTER_SECONDS = 1.0

# Server errors that mean "not now" rather than "never": loading the AOF after a restart,
# out of memory, a replica that cannot take writes, a failover in progress, a slot moving.
TRANSIENT = {
    "LOADING",
    "BUSY",
    "OOM",
    "MISCONF",
    "READONLY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
    "MOVED",
    "ASK",
}

# Either client speaks every command this service sends; a cluster routes each by its key.
RedisClient = Redis | RedisCluster


class RedisTarget(msgspec.Struct, frozen=True, kw_only=True):
    """Which Redis the service talks to, and how many replicas must confirm a write.

    `url` alone: one server. With `sentinels` and `sentinel_master`: whichever server the
    Sentinels name primary now; `url` then carries only the database, user and password.
    With `cluster`: `url` is one node of a Redis Cluster and the rest are discovered.
    """

    url: str = ""
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = ""
    sentinel_password: str = ""
    cluster: bool = False
    min_replicas: int = 0
    replica_timeout_ms: int = 1000

    @classmethod
    def of(cls, target: RedisTarget | str) -> RedisTarget:
        """A target as given, or a URL meaning one server."""
        return target if isinstance(target, RedisTarget) else cls(url=target)

    def describe(self) -> str:
        """Where this points, for logs and errors; never a password."""
        if self.sentinels:
            nodes = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"Sentinel service {self.sentinel_master!r} via {nodes}"
        parts = urlsplit(self.url)
        where = f"{parts.hostname or parts.path}:{parts.port or 6379}"
        return f"Redis Cluster via {where}" if self.cluster else f"Redis at {where}"


def as_text(value: bytes | str) -> str:
    """A reply value as text: RESP2 replies are bytes."""
    return value.decode() if isinstance(value, bytes) else value


def redis_client(
    target: RedisTarget,
    *,
    pool_size: int,
    socket_timeout: float,
    connect_timeout: float,
    retry: Retry,
    blocking: bool = True,
) -> RedisClient:
    """A client of `target` with these limits. RESP2 is pinned because reply shapes differ
    between protocols and redis-py versions pick different defaults; every Redis >= 2 and
    every Valkey speaks it. A blocking pool makes a burst wait for a free connection instead
    of failing (on a cluster, `BoundedCluster` makes it wait the same way)."""
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "protocol": 2,
        "retry": retry,
    }
    if target.cluster:
        client: RedisCluster = BoundedCluster.from_url(
            target.url, max_connections=pool_size, pool_size=pool_size, **common
        )
        return client
    if target.sentinels:
        return _sentinel_primary(target, pool_size=pool_size, common=common)
    if not blocking:
        return Redis.from_url(target.url, single_connection_client=True, **common)
    return Redis(
        connection_pool=BlockingConnectionPool.from_url(
            target.url,
            max_connections=pool_size,
            timeout=connect_timeout + socket_timeout,
            **common,
        )
    )


def _sentinel_primary(target: RedisTarget, *, pool_size: int, common: dict[str, Any]) -> Redis:
    """A client whose every new connection asks the Sentinels for the primary first, and that
    drops its connections when the primary it reached turns out demoted (READONLY)."""
    data: dict[str, Any] = {}
    if target.url:
        parsed = parse_url(target.url)
        data = {key: parsed[key] for key in ("db", "username", "password") if key in parsed}
        if urlsplit(target.url).scheme == "rediss":
            data["ssl"] = True
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": common["socket_connect_timeout"],
        "socket_connect_timeout": common["socket_connect_timeout"],
        "protocol": 2,
    }
    if target.sentinel_password:
        sentinel_kwargs["password"] = target.sentinel_password
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs, **common, **data)
    client: Redis = sentinel.master_for(
        target.sentinel_master,
        connection_pool_class=BlockingSentinelPool,
        max_connections=pool_size,
        timeout=common["socket_connect_timeout"] + common["socket_timeout"],
    )
    return client


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool (connections to whichever server is primary now) with the blocking
    pool's waiting: a burst waits for a free connection, as on one server, instead of
    failing with "Too many connections"."""


# Set while a task holds one of a BoundedCluster's slots: what it calls from inside (a pipeline
# retrying a redirected command one by one) must not queue for a second slot.
_HOLDING: ContextVar[bool] = ContextVar("holding_a_cluster_slot", default=False)


class BoundedCluster(RedisCluster):
    """A cluster client whose commands and pipelines wait for one of `pool_size` slots.

    redis-py's cluster pools fail fast: past `max_connections` on a node, a command raises
    MaxConnectionsError (a ConnectionError with no message) instead of waiting, so a burst
    larger than the pool would get 503s and the rate limiter would fail open exactly when it
    matters. With at most `pool_size` commands in flight, no node ever needs more than
    `pool_size` connections, and a burst waits as it does on one server.
    """

    def __init__(self, *args: Any, pool_size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots = asyncio.Semaphore(pool_size)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot (or nothing more, if this task holds one already)."""
        if _HOLDING.get():
            yield
            return
        async with self.slots:
            token = _HOLDING.set(True)
            try:
                yield
            finally:
                _HOLDING.reset(token)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.slot():
            return await super().execute_command(*args, **kwargs)

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # raises, as redis-py does
        # redis-py itself makes ClusterPipelines so; its stubs call the class abstract.
        return _BoundedPipeline(self, transaction)  # type: ignore[abstract]


class _BoundedPipeline(ClusterPipeline):
    """A pipeline of a BoundedCluster: executed within one of its slots."""

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        client = self.cluster_client
        assert isinstance(client, BoundedCluster)
        async with client.slot():
            return await super().execute(raise_on_error, allow_redirections)


def durable_client(
    target: RedisTarget | str, *, pool_size: int, socket_timeout: float, connect_timeout: float
) -> RedisClient:
    """For the event log and the document status: writes that must land or fail loudly.

    One quick retry covers a pooled connection the server closed (e.g. after a restart or a
    failover); more would only delay the 503.
    """
    return redis_client(
        RedisTarget.of(target),
        pool_size=pool_size,
        socket_timeout=socket_timeout,
        connect_timeout=connect_timeout,
        retry=Retry(ConstantBackoff(0.05), retries=1),
    )


def fast_client(target: RedisTarget | str, *, pool_size: int, timeout: float) -> RedisClient:
    """For best-effort helpers (embedding cache, rate limiter): short timeouts and no retries,
    so a slow Redis costs a request less than doing without it."""
    return redis_client(
        RedisTarget.of(target),
        pool_size=pool_size,
        socket_timeout=timeout,
        connect_timeout=timeout,
        retry=Retry(NoBackoff(), retries=0),
    )


async def close_client(client: RedisClient) -> None:
    """Close a client made here and every connection of its pool."""
    if isinstance(client, RedisCluster):
        await client.aclose()
    else:
        await client.aclose(close_connection_pool=True)


class DurableStore:
    """A store on one durable client whose keys start with `prefix`: the document status
    and the dead-letter operations on it."""

    def __init__(
        self,
        target: RedisTarget | str,
        *,
        prefix: str = "rag:",
        pool_size: int = 16,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
    ) -> None:
        self._prefix = prefix
        self._target = RedisTarget.of(target)
        self._redis = durable_client(
            self._target,
            pool_size=pool_size,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
        )

    async def close(self) -> None:
        await close_client(self._redis)


@contextmanager
def translated(store: str, action: str) -> Iterator[None]:
    """Turn redis-py's errors into the app's error tree; `store` names what failed ("event
    log", "status store") and `action` the command, for the message."""
    try:
        yield
    except AuthenticationError as exc:  # a ConnectionError subclass, but no outage
        raise EventLogError(f"{store} refused our credentials ({action}): {exc}") from exc
    except (ConnectionError, TimeoutError, OSError) as exc:
        # builtin TimeoutError is an OSError; redis-py raises its own for socket timeouts.
        raise DependencyUnavailable(
            f"{store} unreachable ({action}): {exc}", retry_after=RETRY_AFTER_SECONDS
        ) from exc
    except ResponseError as exc:
        code = str(exc).split(" ", 1)[0]
        if code == "NOGROUP":
            raise NotFound(f"no such consumer group or stream ({action}): {exc}") from exc
        if code in TRANSIENT:
            raise DependencyUnavailable(
                f"{store} cannot serve now ({action}): {exc}", retry_after=RETRY_AFTER_SECONDS
            ) from exc
        raise EventLogError(f"{store} refused {action}: {exc}") from exc
    except RedisError as exc:
        raise EventLogError(f"{store} client error ({action}): {exc}") from exc
