"""Fixtures for tests against a real Redis: the machine's (REDIS_URL), an embedded Valkey and,
for the modules that ask, a Redis Cluster.

Test modules load this with `pytest_plugins`. Every Redis fixture derives from one `backend`
argument, parametrized by `pytest_generate_tests` below with the module's `REDIS_BACKENDS`
(`BACKENDS` unless the module sets it, e.g. to `ALL_BACKENDS`). Every test gets its own key
prefix, with a hash tag so that all of its keys share one cluster slot, and its keys are
deleted afterwards, so runs never see each other's streams.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
import redis.cluster
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.connection import AbstractConnection

from app.adapters.redis.client import RedisTarget
from app.adapters.redis.embedded import EmbeddedRedis
from app.adapters.redis.streams import RedisEventLog
from app.settings import Settings
from tests.topology.redis_servers import ClusterSetup, have_redis

pytest_plugins = ("tests.topology.fixtures",)

MACHINE_REDIS_URL = Settings.from_env().redis_url
# The machine's Redis when REDIS_URL is set (CI), and the embedded Valkey always, so the
# default deployment's server is exercised by the same tests.
BACKENDS = ["redis", "valkey"] if MACHINE_REDIS_URL else ["valkey"]
# Plus a Redis Cluster (tests/topology) where redis-server is installed: for modules whose
# tests hold on every topology (`REDIS_BACKENDS = ALL_BACKENDS`).
# In CI the cluster always runs: without redis-server there, require_redis fails the tests.
ALL_BACKENDS = (
    [*BACKENDS, "cluster"] if have_redis() or os.environ.get("CI") == "true" else list(BACKENDS)
)

# What `raw_redis` is: a plain client, or a cluster client on the cluster backend.
RawRedis = redis.asyncio.Redis | AsyncRedisCluster


def _names_backend(mark: pytest.Mark) -> bool:
    argnames = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
    if isinstance(argnames, str):
        argnames = [name.strip() for name in argnames.split(",")]
    return "backend" in argnames


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses a Redis fixture once per backend of its module.

    Once loaded, this hook sees every test of the session: a test that parametrizes its own
    `backend` (tests/e2e/test_projector_kills.py) is left alone."""
    if "backend" not in metafunc.fixturenames:
        return
    if any(_names_backend(mark) for mark in metafunc.definition.iter_markers("parametrize")):
        return
    backends = list(getattr(metafunc.module, "REDIS_BACKENDS", BACKENDS))
    metafunc.parametrize("backend", backends, ids=backends)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def embedded_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("valkey"))
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def redis_target(backend: str, request: pytest.FixtureRequest) -> RedisTarget:
    """The Redis of this backend, as the adapters take it. The embedded Valkey and the
    cluster are started on first use only."""
    if backend == "redis":
        return RedisTarget(url=MACHINE_REDIS_URL)
    if backend == "valkey":
        server: EmbeddedRedis = request.getfixturevalue("embedded_valkey")
        return RedisTarget(url=server.url)
    if backend == "cluster":
        cluster: ClusterSetup = request.getfixturevalue("redis_cluster")
        return RedisTarget(url=cluster.url, cluster=True)
    raise ValueError(f"unknown Redis backend {backend!r}")


@pytest.fixture()
def redis_url(redis_target: RedisTarget) -> str:
    """The backend's URL, for what needs a plain URL (on the cluster: one node's)."""
    return redis_target.url


@pytest.fixture()
def prefix(redis_target: RedisTarget) -> Iterator[str]:
    # The hash tag keeps every key of the test in one slot, as RAG_STREAM_PREFIX must on a
    # cluster; each test's tag differs, so the tests spread over the cluster's nodes.
    value = f"test:{{{uuid.uuid4().hex}}}:"
    yield value
    delete_prefixed(redis_target, value)


def sync_client(target: RedisTarget | str) -> redis.Redis | redis.cluster.RedisCluster:
    """A sync client of the target's topology (RESP2, bytes)."""
    target = RedisTarget.of(target)
    if target.cluster:
        return redis.cluster.RedisCluster.from_url(target.url, protocol=2)
    return redis.Redis.from_url(target.url, protocol=2)


def async_client(target: RedisTarget | str) -> RawRedis:
    """An async client of the target's topology (RESP2, bytes)."""
    target = RedisTarget.of(target)
    if target.cluster:
        return AsyncRedisCluster.from_url(target.url, protocol=2)
    return redis.asyncio.Redis.from_url(target.url, protocol=2)


def delete_prefixed(target: RedisTarget | str, key_prefix: str) -> None:
    """Delete every key under `key_prefix` (on a cluster: SCAN covers every primary)."""
    client = sync_client(target)
    try:
        keys = list(client.scan_iter(match=f"{key_prefix}*", count=1000))
        for key in keys:  # one by one: a cluster refuses a DEL across slots
            client.delete(key)
    finally:
        client.close()


@pytest.fixture()
async def event_log(redis_target: RedisTarget) -> AsyncIterator[RedisEventLog]:
    log = RedisEventLog(redis_target, pool_size=4)
    yield log
    await log.close()


@pytest.fixture()
async def raw_redis(redis_target: RedisTarget) -> AsyncIterator[RawRedis]:
    """A plain client, for what the adapters must cope with but never write themselves; on
    the cluster backend a cluster client, routing each command by its key."""
    client = async_client(redis_target)
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


async def delivery_counts(
    target: RedisTarget | str, stream: str, group: str, ids: list[str]
) -> dict[str, int]:
    """How often the group has delivered each still-pending entry (XPENDING), read beside the
    adapter: the service never needs it, since strikes rather than deliveries count."""
    client = async_client(target)
    try:
        counts: dict[str, int] = {}
        for entry_id in ids:
            for row in await client.xpending_range(
                stream, group, min=entry_id, max=entry_id, count=1
            ):
                message_id = row["message_id"]
                key = message_id.decode() if isinstance(message_id, bytes) else str(message_id)
                counts[key] = int(row["times_delivered"])
        return counts
    finally:
        await client.aclose()
