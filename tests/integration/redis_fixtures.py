"""Fixtures for tests against a real Redis: the machine's (REDIS_URL) and an embedded Valkey.

Test modules load this with `pytest_plugins`. Every test gets its own key prefix and its
keys are deleted afterwards, so runs never see each other's streams.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
from redis.asyncio.connection import AbstractConnection

from app.adapters.redis.embedded import EmbeddedRedis
from app.adapters.redis.streams import RedisEventLog
from app.settings import Settings

MACHINE_REDIS_URL = Settings.from_env().redis_url
# The machine's Redis when REDIS_URL is set (CI), and the embedded Valkey always, so the
# default deployment's server is exercised by the same tests.
BACKENDS = ["redis", "valkey"] if MACHINE_REDIS_URL else ["valkey"]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def embedded_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("valkey"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def redis_url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        return MACHINE_REDIS_URL
    server: EmbeddedRedis = request.getfixturevalue("embedded_valkey")
    return server.url


@pytest.fixture()
def prefix(redis_url: str) -> Iterator[str]:
    value = f"test:{uuid.uuid4().hex}:"
    yield value
    delete_prefixed(redis_url, value)


def delete_prefixed(url: str, key_prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{key_prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture()
async def event_log(redis_url: str) -> AsyncIterator[RedisEventLog]:
    log = RedisEventLog(redis_url, pool_size=4)
    yield log
    await log.close()


@pytest.fixture()
async def raw_redis(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client, for what the adapters must cope with but never write themselves."""
    client = redis.asyncio.Redis.from_url(redis_url, protocol=2)
    yield client
    await client.aclose()


@pytest.fixture()
def closed_port_url() -> str:
    """A URL nothing listens on: the port was free a moment ago and is closed now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


class RoundTrips:
    """Counts requests sent to Redis: one per command, one per pipeline."""

    def __init__(self) -> None:
        self.count = 0


@pytest.fixture()
def round_trips(monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    counter = RoundTrips()
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, *args: object, **kwargs: object) -> None:
        counter.count += 1
        await original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return counter


def data_dir_of(server: EmbeddedRedis) -> Path:
    """The RAG_DATA_DIR a server was made for (its files sit in `<data dir>/redis`)."""
    return server.dir.parent


async def delivery_counts(url: str, stream: str, group: str, ids: list[str]) -> dict[str, int]:
    """How often the group has delivered each still-pending entry (XPENDING), read beside the
    adapter: the service never needs it, since strikes rather than deliveries count."""
    client = redis.asyncio.Redis.from_url(url, protocol=2)
    try:
        counts: dict[str, int] = {}
        for entry_id in ids:
            for row in await client.xpending_range(
                stream, group, min=entry_id, max=entry_id, count=1
            ):
                counts[row["message_id"].decode()] = int(row["times_delivered"])
        return counts
    finally:
        await client.aclose()
