"""How this service talks to Redis: one client factory, one translation of redis-py errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
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
# out of memory, a replica that cannot take writes, a failover in progress.
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
}


def as_text(value: bytes | str) -> str:
    """A reply value as text: RESP2 replies are bytes."""
    return value.decode() if isinstance(value, bytes) else value


def durable_client(
    url: str, *, pool_size: int, socket_timeout: float, connect_timeout: float
) -> Redis:
    """For the event log and the document status: writes that must land or fail loudly.

    RESP2 is pinned because reply shapes differ between protocols and redis-py versions pick
    different defaults; every Redis >= 2 and every Valkey speaks it. One quick retry covers a
    pooled connection the server closed (e.g. after a restart); more would only delay the 503.
    A blocking pool makes a burst wait for a free connection instead of failing.
    """
    return Redis(
        connection_pool=BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=connect_timeout + socket_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            protocol=2,
            retry=Retry(ConstantBackoff(0.05), retries=1),
        )
    )


def fast_client(url: str, *, pool_size: int, timeout: float) -> Redis:
    """For best-effort helpers (embedding cache, rate limiter): short timeouts and no retries,
    so a slow Redis costs a request less than doing without it."""
    return Redis(
        connection_pool=BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            protocol=2,
            retry=Retry(NoBackoff(), retries=0),
        )
    )


class DurableStore:
    """A store on one durable client whose keys start with `prefix`: the document status
    and the dead-letter operations on it."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "rag:",
        pool_size: int = 16,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
    ) -> None:
        self._prefix = prefix
        self._redis = durable_client(
            url,
            pool_size=pool_size,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
        )

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)


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
