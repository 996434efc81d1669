"""The Redis adapters on replicated topologies: replica-acknowledged appends, Sentinel failover.

Real servers on 127.0.0.1 (tests/topology): a primary with a replica and three Sentinels, and
a Redis Cluster whose primaries each have a replica.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from app.adapters.redis.cache import RedisEmbeddingCache
from app.adapters.redis.client import RedisTarget
from app.adapters.redis.doc_status import RedisDocStatus
from app.adapters.redis.jobs import RedisReplayJobs
from app.adapters.redis.rate_limit import RedisRateLimiter
from app.adapters.redis.streams import RedisEventLog
from app.domain.doc_status import Applied, Written
from app.domain.events import DocumentDeleted
from app.errors import DependencyUnavailable, NotReplicated
from app.ports import CachedEmbedding
from app.services.replay import ReplayProgress
from app.services.replay_jobs import StoredReplayJob
from tests.topology.fixtures import require_redis
from tests.topology.redis_servers import ClusterSetup, SentinelSetup, paused

pytest_plugins = ("tests.integration.redis_fixtures", "tests.topology.fixtures")

T = TypeVar("T")


def deleted(doc_id: str) -> DocumentDeleted:
    return DocumentDeleted(tenant="t", doc_id=doc_id, at=0.0, traceparent=None)


def sentinel_target(setup: SentinelSetup, **changes: int) -> RedisTarget:
    return RedisTarget(
        sentinels=tuple(
            (host, int(port))
            for host, port in (a.split(":") for a in setup.sentinel_addresses.split(","))
        ),
        sentinel_master=setup.master_name,
        **changes,
    )


async def until_served(action: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    """`action`'s result once it succeeds; while the topology moves it may only fail with
    DependencyUnavailable (a 503), never with anything else."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await action()
        except DependencyUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> bool:
    """Whether `check` comes true within `timeout`."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


@pytest.fixture()
async def replicated_log(sentinel_setup: SentinelSetup) -> AsyncIterator[RedisEventLog]:
    log = RedisEventLog(
        sentinel_target(sentinel_setup, min_replicas=1, replica_timeout_ms=300), pool_size=4
    )
    yield log
    await log.close()


@pytest.mark.anyio
async def test_a_replica_has_the_events_once_the_append_returns(
    sentinel_setup: SentinelSetup, replicated_log: RedisEventLog
) -> None:
    ids = await replicated_log.append_many("s", [deleted("a"), deleted("b")])
    (replica,) = sentinel_setup.replica_ports()
    # Read on the replica right away: WAIT returned only once it had processed them.
    with sentinel_setup.node(replica).client() as conn:
        assert [entry_id for entry_id, _ in conn.xrange("s")] == ids


@pytest.mark.anyio
async def test_a_replica_that_does_not_confirm_fails_the_append_on_every_connection(
    sentinel_setup: SentinelSetup, replicated_log: RedisEventLog
) -> None:
    # Warm the pool (two appends in flight, so several connections have written): a WAIT
    # sent on any connection but the writing one would count the paused replica, whose
    # acknowledged offset covers everything that other connection wrote.
    for wave in range(4):
        await asyncio.gather(
            *(replicated_log.append("s", deleted(f"w{wave}{i}")) for i in range(2))
        )
    (replica,) = sentinel_setup.replica_ports()
    with paused(sentinel_setup.node(replica)):
        for i in range(6):
            with pytest.raises(NotReplicated, match="0 of 1 replicas"):
                await replicated_log.append("s", deleted(f"p{i}"))
        # On the primary all the same: "may or may not survive" is the truth.
        with sentinel_setup.primary().client() as conn:
            assert conn.xlen("s") == 8 + 6
    assert await replicated_log.append("s", deleted("after")) is not None


@pytest.mark.anyio
async def test_status_records_wait_for_the_replica_too(sentinel_setup: SentinelSetup) -> None:
    """A projector's applied record must not outlive a switchover only on the old primary
    while the entry's XACK went to the new one: the document would read "pending" for ever."""
    status = RedisDocStatus(
        sentinel_target(sentinel_setup, min_replicas=1, replica_timeout_ms=300), prefix="st:"
    )
    try:
        record = Applied(event_id="1-1", status="deleted", at=0.0)
        assert await status.record_applied("m", "t", {"a": record}) == {"a"}
        (replica,) = sentinel_setup.replica_ports()
        with paused(sentinel_setup.node(replica)):
            with pytest.raises(NotReplicated):
                await status.record_applied(
                    "m", "t", {"b": Applied(event_id="1-2", status="deleted", at=0.0)}
                )
            with pytest.raises(NotReplicated):
                await status.record_written(
                    "t", {"b": Written(event_id="1-2", op="delete", version=None, at=0.0)}
                )
    finally:
        await status.close()


@pytest.mark.anyio
async def test_without_replicas_required_a_paused_replica_does_not_matter(
    sentinel_setup: SentinelSetup,
) -> None:
    log = RedisEventLog(sentinel_target(sentinel_setup, min_replicas=0), pool_size=2)
    try:
        (replica,) = sentinel_setup.replica_ports()
        with paused(sentinel_setup.node(replica)):
            assert len(await log.append_many("s", [deleted("a")])) == 1
    finally:
        await log.close()


@pytest.mark.anyio
async def test_unreplicated_appends_of_the_recorder_do_not_wait(
    sentinel_setup: SentinelSetup, replicated_log: RedisEventLog
) -> None:
    (replica,) = sentinel_setup.replica_ports()
    with paused(sentinel_setup.node(replica)):
        assert len(await replicated_log.append_many("r", [deleted("a")], replicated=False)) == 1


@pytest.mark.anyio
async def test_every_adapter_finds_the_new_primary_after_a_failover(
    sentinel_setup: SentinelSetup,
) -> None:
    target = sentinel_target(sentinel_setup, min_replicas=0)
    log = RedisEventLog(target, pool_size=2)
    status = RedisDocStatus(target, prefix="p:", pool_size=2)
    cache = RedisEmbeddingCache(target, prefix="p:", backoff_seconds=0.0)
    limiter = RedisRateLimiter(target, prefix="p:")
    jobs = RedisReplayJobs(target, prefix="p:")
    try:
        await log.ensure_group("docs", "g")
        before = await log.append("docs", deleted("a"))
        await status.record_written(
            "t", {"a": Written(event_id=before, op="delete", version=None, at=0.0)}
        )
        old = sentinel_setup.kill_primary()
        # A consumer blocked on the primary that dies: 503s until the Sentinels promote the
        # replica, then its reads resume there without a restart.
        with pytest.raises(DependencyUnavailable):
            await log.read_group("docs", "g", "c1", count=10, block_ms=200)
        sentinel_setup.wait_failover(old)
        after = await until_served(lambda: log.append("docs", deleted("b")))
        read = await until_served(lambda: log.read_group("docs", "g", "c1", count=10, block_ms=100))
        assert [e.id for e in read] == [before, after]
        await until_served(
            lambda: status.record_written(
                "t", {"b": Written(event_id=after, op="delete", version=None, at=0.0)}
            )
        )
        assert [w.event_id if w else None for w in await status.written("t", ["a", "b"])] == [
            before,
            after,
        ]
        job = StoredReplayJob(job_id="j1", progress=ReplayProgress(phase="done"), saved_at=1.0)
        await until_served(lambda: jobs.save(job))
        assert await jobs.load("j1") == job

        # The best-effort helpers fail open while Redis is away, and work again after.
        async def cached() -> bool:
            await cache.put_many("t", "m", ["x"], [CachedEmbedding(vector=b"v", signature=None)])
            return (await cache.get_many("t", "m", ["x"]))[0] is not None

        async def limited() -> bool:
            failed = limiter.failed_open
            await limiter.take("k", rate=10, burst=10)
            return limiter.failed_open == failed

        assert await eventually(cached)
        assert await eventually(limited)
        sentinel_setup.restart_as_replica(old)
    finally:
        for adapter in (log, status, cache, limiter, jobs):
            await adapter.close()


@pytest.fixture(scope="module")
def replicated_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    """Three primaries with a replica each, for this module's WAIT-on-a-cluster test."""
    require_redis()
    with ClusterSetup(tmp_path_factory.mktemp("cluster-replicas"), replicas=1) as cluster:
        yield cluster


@pytest.mark.anyio
async def test_on_a_cluster_the_wait_goes_to_the_slot_owner(
    replicated_cluster: ClusterSetup, tmp_path: Path
) -> None:
    target = RedisTarget(
        # 2 s, not less: a replica of a cluster just built, on a loaded machine, took over 300 ms
        # to confirm the first write in one CI run.
        url=replicated_cluster.url,
        cluster=True,
        min_replicas=1,
        replica_timeout_ms=2000,
    )
    log = RedisEventLog(target, pool_size=4)
    stream = f"{{{uuid.uuid4().hex}}}:documents"
    try:
        assert len(await log.append_many(stream, [deleted("a"), deleted("b")])) == 2
        with replicated_cluster.client() as cluster:
            owner = cluster.get_node_from_key(stream)
            replica = next(
                node
                for node in replicated_cluster.nodes
                if node.info_replication().get("master_port") == owner.port
            )
        with paused(replica), pytest.raises(NotReplicated):
            await log.append(stream, deleted("c"))
        assert await log.append(stream, deleted("d"))
        raw = redis.Redis(host="127.0.0.1", port=owner.port)
        try:
            assert raw.xlen(stream) == 4
        finally:
            raw.close()
    finally:
        await log.close()
