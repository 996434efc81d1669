"""The event log a process runs against: REDIS_URL checked, or the embedded Valkey hosted."""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import redis

from app.adapters.redis.client import RedisTarget, close_client, durable_client, translated
from app.adapters.redis.embedded import EmbeddedRedis, resolve_redis_url, supervise
from app.adapters.redis.migration import CopyReport, copy_prefix
from app.errors import SettingsError
from app.settings import Settings, parse_sentinels


def redis_target(settings: Settings) -> RedisTarget:
    """The Redis every adapter talks to, from settings whose REDIS_URL is resolved."""
    return RedisTarget(
        url=settings.redis_url,
        sentinels=tuple(parse_sentinels(settings.redis_sentinels)),
        sentinel_master=settings.redis_sentinel_master,
        sentinel_password=settings.redis_sentinel_password,
        cluster=settings.redis_cluster,
        min_replicas=settings.redis_min_replicas,
        replica_timeout_ms=settings.redis_replica_timeout_ms,
    )


def resolve_event_log(settings: Settings) -> tuple[str, EmbeddedRedis | None]:
    """REDIS_URL, or the data directory's embedded Valkey (`resolve_redis_url`), with a data
    directory that cannot hold it reported as the setting it is."""
    if not settings.redis_url and not settings.redis_sentinels:
        check_data_dir(settings, "the embedded Valkey, REDIS_URL being empty")
    return resolve_redis_url(settings)


def check_redis_url(url: str) -> None:
    """SettingsError for a REDIS_URL redis-py cannot parse (a port that is not a number, a
    bad database), which it would otherwise raise as a bare ValueError on first use."""
    if not url:
        return
    try:
        redis.ConnectionPool.from_url(url)  # parses the URL, connects nothing
    except ValueError as exc:
        # redis-py's messages name the part at fault, never the password.
        raise SettingsError(f"REDIS_URL: {exc}") from exc


def check_data_dir(settings: Settings, needed_for: str) -> Path:
    """RAG_DATA_DIR, created if missing; SettingsError if it cannot be, or is not writable."""
    path = settings.data_path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(
            f"RAG_DATA_DIR {path}: cannot create it (needed for {needed_for}): "
            f"{exc.strerror or exc}"
        ) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise SettingsError(
            f"RAG_DATA_DIR {path}: not writable by this process (needed for {needed_for})"
        )
    return path


class EventLogHost(msgspec.Struct, frozen=True, kw_only=True):
    """The event log a command runs against: `settings` with REDIS_URL resolved, and, when
    this process started the data directory's embedded Valkey, how to keep it up."""

    settings: Settings
    # Runs until cancelled, restarting the embedded server whenever its process is gone
    # (nothing else would); None when REDIS_URL names a server or another process hosts it.
    keep_up: Callable[[], Coroutine[Any, Any, None]] | None


@contextmanager
def hosted_event_log(settings: Settings) -> Iterator[EventLogHost]:
    """The event log REDIS_URL names or, when it is empty, the data directory's embedded
    Valkey: found or started here, and stopped on exit if started here."""
    url, embedded = resolve_event_log(settings)
    try:
        yield EventLogHost(
            settings=settings.replace(redis_url=url),
            keep_up=None if embedded is None else partial(supervise, embedded),
        )
    finally:
        if embedded is not None:
            embedded.stop()


async def copy_event_log(
    settings: Settings, *, from_url: str, from_cluster: bool, from_prefix: str, with_cache: bool
) -> CopyReport:
    """Copy the keys under `from_prefix` on the Redis at `from_url` into the Redis and prefix
    `settings` name (REDIS_URL resolved): `rag-pipeline copy-redis`."""
    # Long timeouts: a page of a large stream is slow to write on a busy cluster.
    source, target = (
        durable_client(where, pool_size=2, socket_timeout=30.0, connect_timeout=5.0)
        for where in (RedisTarget(url=from_url, cluster=from_cluster), redis_target(settings))
    )
    try:
        with translated("Redis", "copy"):
            return await copy_prefix(
                source,
                target,
                from_prefix=from_prefix,
                to_prefix=settings.stream_prefix,
                with_cache=with_cache,
            )
    finally:
        await close_client(source)
        await close_client(target)
