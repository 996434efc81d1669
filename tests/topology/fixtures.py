"""Pytest plugin with real Redis topologies; test modules load it with
`pytest_plugins = ("tests.topology.fixtures",)`.

`redis_cluster` is one Redis Cluster for the session (tests share it, so they keep to keys of
their own); `sentinel_setup` is a fresh primary, replica and three Sentinels per test, since
failover tests change the topology. Both skip when `redis-server`/`redis-cli` are missing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.deploy._support import missing
from tests.topology.redis_servers import ClusterSetup, SentinelSetup, have_redis


def require_redis() -> None:
    """Skip the calling test unless `redis-server` and `redis-cli` (>= 7) are on PATH; fail in
    CI (CI=true), whose machine has them, so a missing install never passes as a skip."""
    if not have_redis():
        missing(
            "redis-server and redis-cli (Redis >= 7)",
            "the Sentinel and Cluster topology tests start real servers",
        )


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    """Three primaries, no replicas, started once for the session."""
    require_redis()
    with ClusterSetup(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture()
def sentinel_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """A primary, one replica in sync and three Sentinels that agree on them."""
    require_redis()
    with SentinelSetup(tmp_path_factory.mktemp("redis-sentinel")) as setup:
        yield setup
