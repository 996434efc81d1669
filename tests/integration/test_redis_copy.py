"""`copy-redis` moves a deployment's keys to a new prefix on a Redis Cluster, losing nothing.

The source is the machine's Redis (or the embedded Valkey) under a prefix without a hash
tag, as every deployment before Redis Cluster support has; the target a real cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.cluster

from app.adapters.redis.client import RedisTarget
from app.adapters.redis.migration import copy_prefix
from app.adapters.redis.streams import EVENT_FIELD, RedisEventLog
from app.domain.events import (
    DocumentDeleted,
    EventDeadLettered,
    Streams,
    decode_event,
    encode_event,
)
from app.errors import EventLogError
from tests.topology.redis_servers import ClusterSetup

pytest_plugins = ("tests.integration.redis_fixtures", "tests.topology.fixtures")


def deleted(doc_id: str) -> DocumentDeleted:
    return DocumentDeleted(tenant="t", doc_id=doc_id, at=0.0, traceparent=None)


@pytest.fixture()
def cluster_prefix(redis_cluster: ClusterSetup) -> Iterator[str]:
    prefix = f"{{{uuid.uuid4().hex}}}:"
    yield prefix
    with redis_cluster.client(decode_responses=False) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", target_nodes=client.PRIMARIES))
        for key in keys:
            client.delete(key)


async def fill(url: str, prefix: str) -> dict[str, str]:
    """A deployment's keys as the service leaves them: a document stream with a deleted
    entry, a consumer group with one entry pending, status, a dead letter, a cache entry."""
    streams = Streams(prefix=prefix)
    log = RedisEventLog(url, pool_size=2)
    raw = redis.Redis.from_url(url)
    try:
        ids = await log.append_many(streams.documents, [deleted(f"d{i}") for i in range(5)])
        await log.ensure_group(streams.documents, "indexer", start="0")
        read = await log.read_group(streams.documents, "indexer", "gone-pod", count=3, block_ms=0)
        await log.ack(streams.documents, "indexer", [read[0].id, read[2].id])  # [1] pending
        raw.xdel(streams.documents, ids[4])  # the newest deleted: ids must still grow past it
        letter = EventDeadLettered(
            source_stream=streams.documents,
            source_id=ids[3],
            group="indexer",
            raw=b"{}",
            error="boom",
            deliveries=5,
            at=0.0,
        )
        await log.append(streams.dead_letter, letter)
        raw.hset(
            f"{prefix}docs:t", mapping={f"d{i}": f'{{"event_id":"{ids[i]}"}}' for i in range(4)}
        )
        raw.set(f"{prefix}replay-job:j", b"{}", ex=3600)
        raw.set(f"{prefix}emb:t:m:abc", b"vector")
        return {"pending": read[1].id, "last": ids[4], "first": ids[0]}
    finally:
        raw.close()
        await log.close()


@pytest.mark.anyio
async def test_a_copy_to_a_cluster_keeps_entries_groups_status_and_dead_letters(
    redis_url: str, prefix: str, redis_cluster: ClusterSetup, cluster_prefix: str
) -> None:
    seen = await fill(redis_url, prefix)
    source = redis.asyncio.Redis.from_url(redis_url, protocol=2)
    target = redis.asyncio.cluster.RedisCluster.from_url(redis_cluster.url, protocol=2)
    try:
        report = await copy_prefix(source, target, from_prefix=prefix, to_prefix=cluster_prefix)
        assert report.keys == {"stream": 2, "hash": 1, "string": 1}
        assert (report.entries, report.groups, report.skipped) == (5, 1, 1)
        assert report.letters_rewritten == 1
        # A second copy would mix two histories: refused before writing anything.
        with pytest.raises(EventLogError, match="already holds"):
            await copy_prefix(source, target, from_prefix=prefix, to_prefix=cluster_prefix)
    finally:
        await source.aclose()
        await target.aclose()

    old, new = Streams(prefix=prefix), Streams(prefix=cluster_prefix)
    with (
        redis.Redis.from_url(redis_url) as src,
        redis_cluster.client(decode_responses=False) as dst,
    ):
        assert dst.xrange(new.documents) == src.xrange(old.documents)
        assert dst.hgetall(f"{cluster_prefix}docs:t") == src.hgetall(f"{prefix}docs:t")
        assert 0 < dst.ttl(f"{cluster_prefix}replay-job:j") <= 3600
        assert dst.exists(f"{cluster_prefix}emb:t:m:abc") == 0  # the cache is left behind
        ((_, fields),) = dst.xrange(new.dead_letter)
        letter = decode_event(fields[EVENT_FIELD])
        assert isinstance(letter, EventDeadLettered)
        assert letter.source_stream == new.documents
        # Ids keep growing past the deleted newest entry.
        assert (
            dst.xadd(new.documents, {EVENT_FIELD: encode_event(deleted("x"))}).decode()
            > seen["last"]
        )

    log = RedisEventLog(RedisTarget(url=redis_cluster.url, cluster=True), pool_size=2)
    try:
        # The pending entry's consumer is gone: the group hands it out again, then the rest.
        again = await log.read_group(new.documents, "indexer", "new-pod", count=10, block_ms=0)
        assert again[0].id == seen["pending"]
        assert seen["first"] not in {e.id for e in again}
    finally:
        await log.close()


def test_the_command_copies_into_the_configured_cluster(
    redis_url: str,
    prefix: str,
    redis_cluster: ClusterSetup,
    cluster_prefix: str,
    anyio_backend: str,
) -> None:
    import anyio

    anyio.run(fill, redis_url, prefix)
    env = {
        **os.environ,
        "REDIS_URL": redis_cluster.url,
        "REDIS_CLUSTER": "true",
        "RAG_STREAM_PREFIX": cluster_prefix,
    }
    command = [sys.executable, "-m", "app", "copy-redis", "--from-url", redis_url]
    done = subprocess.run(
        [*command, "--from-prefix", prefix], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert '"entries":5' in done.stdout
    # Again: the target is no longer empty, and the command says so.
    again = subprocess.run(
        [*command, "--from-prefix", prefix], env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 1
    assert "already holds" in again.stderr
