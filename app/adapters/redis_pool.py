"""The one way this service opens Redis connections: RESP2, a blocking pool, explicit timeouts."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff, NoBackoff


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
