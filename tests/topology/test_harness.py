"""The topology harness itself: Sentinels fail over to the replica when the primary is
killed, the killed node comes back as a replica and syncs, and a Cluster forms and serves."""

from __future__ import annotations

import time

import pytest

from tests.topology.redis_servers import ClusterSetup, SentinelSetup, free_ports

pytest_plugins = ("tests.topology.fixtures",)


def test_free_ports_are_distinct_and_leave_the_cluster_bus_free() -> None:
    ports = free_ports(6, cluster_bus=True)
    assert len(set(ports)) == 6
    assert all(p + 10000 <= 65535 for p in ports)
    assert len(set(free_ports(8))) == 8


def test_a_killed_primary_fails_over_and_comes_back_as_a_synced_replica(
    sentinel_setup: SentinelSetup,
) -> None:
    setup = sentinel_setup
    first = setup.primary_port()
    (replica,) = setup.replica_ports()
    assert setup.sentinel_addresses.count("127.0.0.1:") == 3
    with setup.node(first).client() as primary:
        primary.set("before", "kill")
        assert primary.wait(1, 2000) == 1  # on the replica before the primary dies

    started = time.monotonic()
    assert setup.kill_primary() == first
    assert setup.wait_failover(first, timeout=20) == replica
    took = time.monotonic() - started
    assert took < 15, f"failover took {took:.1f}s"
    with setup.node(replica).client() as promoted:
        assert promoted.get("before") == "kill"
        promoted.set("after", "failover")

    setup.restart_as_replica(first)
    setup.wait_in_sync(first, timeout=20)
    restarted = setup.node(first)
    assert restarted.role() == "slave"
    assert restarted.info_replication()["master_port"] == replica
    with restarted.client() as conn:
        assert (conn.get("before"), conn.get("after")) == ("kill", "failover")

    # ... and it is a candidate again: the next kill fails over back to it.
    assert setup.kill_primary() == replica
    assert setup.wait_failover(replica, timeout=20) == first
    with restarted.client() as conn:
        assert conn.get("after") == "failover"


@pytest.mark.slow
def test_a_switchover_demotes_the_live_primary(sentinel_setup: SentinelSetup) -> None:
    setup = sentinel_setup
    first = setup.primary_port()
    (replica,) = setup.replica_ports()
    with setup.node(first).client() as primary:
        primary.set("before", "switch")
        assert primary.wait(1, 2000) == 1
    started = time.monotonic()
    assert setup.switchover() == (first, replica)
    # Slow by Sentinel's design: the demoted primary stays a primary until a Sentinel's next
    # INFO of it (every 10 s) shows the wrong role, and only then is told to replicate.
    print(f"\nswitchover and resync: {time.monotonic() - started:.1f}s")
    assert setup.node(first).role() == "slave"
    with setup.node(first).client() as conn:
        assert conn.get("before") == "switch"


def test_a_cluster_forms_and_serves_keys_in_every_slot_range(redis_cluster: ClusterSetup) -> None:
    assert redis_cluster.url == f"redis://127.0.0.1:{redis_cluster.ports[0]}/0"
    with redis_cluster.client() as cluster:
        keys = {f"harness:{i}": str(i) for i in range(30)}
        for key, value in keys.items():
            cluster.set(key, value)
        assert {key: cluster.get(key) for key in keys} == keys
        owners = {cluster.get_node_from_key(key).port for key in keys}
        assert len(owners) == 3  # the keys spread over every primary
        # A hash tag keeps keys (a stream prefix) on one slot, so multi-key commands work.
        cluster.xadd("{harness}:documents", {"event": "1"})
        cluster.xadd("{harness}:documents", {"event": "2"})
        assert cluster.xlen("{harness}:documents") == 2
        cluster.delete(*keys, "{harness}:documents")
