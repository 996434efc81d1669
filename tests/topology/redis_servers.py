"""Real Redis topologies on 127.0.0.1 for tests: each process in a directory of its own,
nothing persisted, everything killed by `stop()` (or leaving the `with` block).

`RedisNode` is one `redis-server`. `SentinelSetup` is a primary, its replicas and three
Sentinels, with the moves a failover test makes: kill the primary, wait for the Sentinels to
promote a replica, start the killed node again as a replica of the new primary, wait until it
is in sync. `ClusterSetup` is a Redis Cluster made by `redis-cli --cluster create`.

Needs `redis-server` and `redis-cli` (>= 7) on PATH; `have_redis()` says whether they are.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import redis
import redis.cluster

HOST = "127.0.0.1"
REDIS_SERVER = "redis-server"
REDIS_CLI = "redis-cli"
CLUSTER_BUS_OFFSET = 10000  # a cluster node's bus listens on its port + 10000
# Cluster ports come from below the kernel's ephemeral range (32768-60999 by default): there,
# port + 10000 can pass 65535, and the kernel hands those ports to outgoing connections.
_CLUSTER_PORTS = (12000, 22000)

T = TypeVar("T")


def have_redis() -> bool:
    """Whether `redis-server` and `redis-cli` are on PATH."""
    return shutil.which(REDIS_SERVER) is not None and shutil.which(REDIS_CLI) is not None


def _bindable(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        return None
    return sock


def free_ports(n: int, *, cluster_bus: bool = False) -> list[int]:
    """`n` distinct TCP ports free on 127.0.0.1 a moment ago (each held until all are found,
    so none is handed out twice); with `cluster_bus`, port + 10000 is free as well."""
    held: list[socket.socket] = []
    try:
        if not cluster_bus:
            while len(held) < n:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.bind((HOST, 0))
            return [int(sock.getsockname()[1]) for sock in held]
        ports: list[int] = []
        rng = random.SystemRandom()
        for _ in range(n * 200):
            port = rng.randrange(*_CLUSTER_PORTS)
            if port in ports:
                continue
            main = _bindable(port)
            if main is None:
                continue
            bus = _bindable(port + CLUSTER_BUS_OFFSET)
            if bus is None:
                main.close()
                continue
            held += [main, bus]
            ports.append(port)
            if len(ports) == n:
                return ports
        raise RuntimeError(f"found only {len(ports)} of {n} free port pairs (port, port + 10000)")
    finally:
        for sock in held:
            sock.close()


def wait_until(
    what: str, check: Callable[[], T | None], timeout: float, *, every: float = 0.05
) -> T:
    """Call `check` until it returns something other than None (or False); that value.

    A RedisError or OSError from `check` counts as "not yet" (a server restarting, a port not
    yet listening); the last one is named if time runs out.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value is not None and value is not False:
                return value
        except (redis.RedisError, OSError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            suffix = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{suffix}")
        time.sleep(every)


def _pairs(row: Sequence[Any] | dict[Any, Any]) -> dict[str, str]:
    """A SENTINEL MASTER/REPLICAS row as a dict: a map over RESP3, a flat [key, value, ...]
    list over RESP2."""
    if isinstance(row, dict):
        return {str(key): str(value) for key, value in row.items()}
    return {str(row[i]): str(row[i + 1]) for i in range(0, len(row) - 1, 2)}


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


class _RedisProcess:
    """A `redis-server` process (data node or Sentinel) on one port, in its own directory,
    logging to `<dir>/redis.log` (appended across restarts)."""

    kind = "redis"

    def __init__(self, port: int, base_dir: Path) -> None:
        self.port = port
        self.dir = Path(base_dir) / f"{self.kind}-{port}"
        self.log = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "not running"
        return f"<{type(self).__name__} {HOST}:{self.port} {state}>"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, **kwargs: Any) -> redis.Redis:
        """A sync redis-py client of this process (strings decoded unless told otherwise)."""
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": 5.0,
            "socket_connect_timeout": 2.0,
        }
        options.update(kwargs)
        return redis.Redis(host=HOST, port=self.port, **options)

    def call(self, *args: Any) -> Any:
        """One command on a fresh connection (raw reply, strings decoded)."""
        with self.client(socket_timeout=2.0) as conn:
            return conn.execute_command(*args)

    def _launch(self, argv: list[str], timeout: float) -> None:
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            log.write(f"\n--- {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise RuntimeError(
                    f"{argv[0]} on port {self.port} exited ({code}):\n{_tail(self.log)}"
                )
            try:
                # A replica loading its first sync answers LOADING: up, if not yet useful.
                with contextlib.suppress(redis.BusyLoadingError):
                    self.call("PING")
                return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"port {self.port} did not answer PING in {timeout}s:\n{_tail(self.log)}"
                )
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL, as a crash, and reap it. Nothing of its data survives (no persistence)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()  # a stopped (SIGSTOP) process dies just as well
        self.proc.wait()
        self.proc = None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a clean shutdown), SIGKILL if it takes longer than `timeout`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process handles SIGTERM once running
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the process holds still (no replies, no replication) until `resume()`."""
        assert self.proc is not None, f"{self!r}"
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)


class RedisNode(_RedisProcess):
    """One data node: `redis-server` without persistence, tuned for fast failovers.

    Diskless replication with no delay, so a replica's full sync starts at once and goes over
    the socket; `cluster_node_timeout_ms` makes it a Redis Cluster node (config file in its
    directory).
    """

    kind = "redis"

    def __init__(
        self,
        port: int,
        base_dir: Path,
        *,
        cluster_node_timeout_ms: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(port, base_dir)
        self.cluster_node_timeout_ms = cluster_node_timeout_ms
        self.extra_args = list(extra_args)

    def argv(self, replicaof: int | None = None) -> list[str]:
        argv = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(self.dir),
            "--protected-mode", "no",
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "no",
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
            # Without persistence, the RDB a replica received for its full sync is deleted once
            # loaded rather than kept as dump.rdb (see also start()).
            "--rdb-del-sync-files", "yes",
        ]  # fmt: skip
        if self.cluster_node_timeout_ms is not None:
            argv += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.dir / "nodes.conf"),
                "--cluster-node-timeout", str(self.cluster_node_timeout_ms),
            ]  # fmt: skip
        if replicaof is not None:
            argv += ["--replicaof", HOST, str(replicaof)]
        return argv + self.extra_args

    def start(self, replicaof: int | None = None, timeout: float = 10.0) -> RedisNode:
        """Start it (as a replica of the node on port `replicaof`, if given); returns once it
        answers PING, which for a replica is before its first sync is done."""
        # Every start is empty: no RDB left over from an earlier life is loaded.
        for leftover in self.dir.glob("*.rdb"):
            leftover.unlink()
        self._launch(self.argv(replicaof), timeout)
        return self

    def info_replication(self) -> dict[str, Any]:
        """INFO replication, parsed by redis-py (role, master_link_status, slaveN, offsets)."""
        with self.client(socket_timeout=2.0) as conn:
            return dict(conn.info("replication"))

    def role(self) -> str:
        """`master` or `slave`, from ROLE."""
        return str(self.call("ROLE")[0])

    def in_sync_with(self, primary: int) -> bool:
        """A replica of `primary` whose link is up: its initial sync is done and loaded."""
        info = self.info_replication()
        return (
            info.get("role") == "slave"
            and int(info.get("master_port", 0)) == primary
            and info.get("master_link_status") == "up"
        )


class SentinelNode(_RedisProcess):
    """One Sentinel: `redis-server <conf> --sentinel`, its conf written into its directory
    (Sentinels rewrite their conf with what they learn, so it must be a writable file)."""

    kind = "sentinel"

    def __init__(self, port: int, base_dir: Path, conf_lines: Sequence[str]) -> None:
        super().__init__(port, base_dir)
        self.conf = self.dir / "sentinel.conf"
        self.conf_lines = list(conf_lines)

    def start(self, timeout: float = 10.0) -> SentinelNode:
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {self.port}",
            f"bind {HOST}",
            f'dir "{self.dir}"',
            "protected-mode no",
            "daemonize no",
            *self.conf_lines,
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        self._launch([REDIS_SERVER, str(self.conf), "--sentinel"], timeout)
        return self

    def master_port(self, name: str) -> int | None:
        """SENTINEL GET-MASTER-ADDR-BY-NAME: the primary's port as this Sentinel sees it."""
        reply = self.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
        return None if not reply else int(reply[1])

    def master(self, name: str) -> dict[str, str]:
        return _pairs(self.call("SENTINEL", "MASTER", name))

    def replicas(self, name: str) -> list[dict[str, str]]:
        return [_pairs(row) for row in self.call("SENTINEL", "REPLICAS", name)]

    def other_sentinels(self, name: str) -> list[dict[str, str]]:
        return [_pairs(row) for row in self.call("SENTINEL", "SENTINELS", name)]


_DOWN_FLAGS = {"s_down", "o_down", "disconnected"}


def _healthy(row: dict[str, str]) -> bool:
    """A SENTINEL REPLICAS row of a replica Sentinel would promote: up, reachable, linked."""
    flags = set(row.get("flags", "").split(","))
    return not flags & _DOWN_FLAGS and row.get("master-link-status") == "ok"


class SentinelSetup:
    """A primary, `replicas` replicas and `sentinels` Sentinels (quorum 2) watching it as
    `master_name`, on free ports under `base_dir` (a temp dir removed at stop if not given).

    The Sentinels mark the primary down after `down_after_ms` and finish a failover within
    `failover_timeout_ms` (a failed attempt is retried after twice that). 1500 ms rather than
    1000: a Sentinel reconnects to a newly promoted primary only after about a second, and
    with down-after at 1000 ms it often holds the new primary down at once and starts a second
    failover (see `wait_failover`); at 1500 ms a failover takes 3-4 s here, without those.

    Nodes keep no data on disk, which shapes how a killed node may come back. Restarted, it
    is empty: started as a primary it would be one with nothing in it (and the Sentinels, who
    remember it as the old primary, might still point clients at it). So it is started again
    only once the failover has completed, and then as a replica of the new primary
    (`restart_as_replica`). And until its first sync is done its dataset is empty, yet a
    Sentinel would promote it (a replica never linked reports no link-down time, which Sentinel
    reads as "fresh"): the next kill of the primary must wait for `wait_in_sync`, or the
    failover could promote an empty replica and every acknowledged write would be gone.
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        master_name: str = "rag-primary",
        down_after_ms: int = 1500,
        failover_timeout_ms: int = 3000,
        quorum: int = 2,
    ) -> None:
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="redis-sentinel-"))
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.quorum = quorum
        ports = free_ports(1 + replicas + sentinels)
        data_ports, sentinel_ports = ports[: 1 + replicas], ports[1 + replicas :]
        self.nodes: dict[int, RedisNode] = {p: RedisNode(p, self.base_dir) for p in data_ports}
        self._first_primary = data_ports[0]
        conf = [
            "sentinel resolve-hostnames no",
            f"sentinel monitor {master_name} {HOST} {self._first_primary} {quorum}",
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
            f"sentinel parallel-syncs {master_name} 1",
        ]
        self.sentinels = [SentinelNode(p, self.base_dir, conf) for p in sentinel_ports]

    def __enter__(self) -> SentinelSetup:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def sentinel_addresses(self) -> str:
        """The Sentinels as REDIS_SENTINELS wants them: `127.0.0.1:p1,127.0.0.1:p2,...`."""
        return ",".join(s.address for s in self.sentinels)

    def start(self, timeout: float = 30.0) -> SentinelSetup:
        """Start the primary and its replicas, wait until the replicas are in sync, then the
        Sentinels; returns once every Sentinel knows the primary, every replica (healthy) and
        the other Sentinels, so a failover can be agreed on from the first moment."""
        primary = self.nodes[self._first_primary].start()
        replicas = [n for p, n in self.nodes.items() if p != primary.port]
        for node in replicas:
            node.start(replicaof=primary.port)
        for node in replicas:
            wait_until(f"{node!r} in sync", partial(node.in_sync_with, primary.port), timeout)
        for sentinel in self.sentinels:
            sentinel.start()
        want = {n.port for n in replicas}

        def settled(sentinel: SentinelNode) -> bool:
            if sentinel.master_port(self.master_name) != primary.port:
                return False
            seen = {int(r["port"]) for r in sentinel.replicas(self.master_name) if _healthy(r)}
            known = len(sentinel.other_sentinels(self.master_name))
            return seen >= want and known == len(self.sentinels) - 1

        for sentinel in self.sentinels:
            self._wait(f"{sentinel!r} to see the topology", partial(settled, sentinel), timeout)
        return self

    def node(self, port: int) -> RedisNode:
        return self.nodes[port]

    def primary_port(self) -> int:
        """The primary's port, as the first Sentinel that answers reports it."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError, OSError):
                port = sentinel.master_port(self.master_name)
                if port is not None:
                    return port
        raise RuntimeError("no Sentinel answered GET-MASTER-ADDR-BY-NAME")

    def primary(self) -> RedisNode:
        return self.nodes[self.primary_port()]

    def replica_ports(self) -> list[int]:
        """Running data nodes other than the primary."""
        primary = self.primary_port()
        return [p for p, n in self.nodes.items() if p != primary and n.running]

    def kill_primary(self) -> int:
        """SIGKILL the node the Sentinels name primary; its port."""
        port = self.primary_port()
        self.nodes[port].kill()
        return port

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> int:
        """The new primary's port, once every Sentinel names one other than `old_port` (the
        same one), has had a PING answered by it since, and does not hold it down; and that
        node answers ROLE as master.

        The answered PING matters with a short `down_after_ms`. On switching, a Sentinel
        resets its link to the new primary and counts the time to the first PONG from the
        reset; it reconnects at most once a second, so with down-after at 1000 ms it often
        holds the new primary down right away and starts a second failover (Redis 7.0; the
        other Sentinels' "down" replies about the old primary still count toward the
        quorum). Until that first PONG only the killed node could be promoted, and it is not
        running, so such an attempt aborts; restarted before then, it could be promoted
        before it synced, empty."""

        def promoted() -> int | None:
            seen = {s.master_port(self.master_name) for s in self.sentinels}
            if len(seen) != 1:
                return None
            (port,) = seen
            if port is None or port == old_port or port not in self.nodes:
                return None
            for sentinel in self.sentinels:
                master = sentinel.master(self.master_name)
                # last-ping-sent: ms since the oldest PING not yet answered (0: none pending).
                if master.get("flags") != "master" or master.get("last-ping-sent") != "0":
                    return None
            return port if self.nodes[port].role() == "master" else None

        return self._wait(f"a failover away from port {old_port}", promoted, timeout)

    def switchover(self, timeout: float = 30.0) -> tuple[int, int]:
        """A planned failover (SENTINEL FAILOVER): the Sentinels promote a replica and demote
        the live primary to a replica of it; (old, new) primary ports, once the demoted node
        is in sync again.

        Takes 10-20 s: the Sentinels switch to the new primary within a second or two, but
        the old one stays a primary, taking writes from clients still connected to it, until
        a Sentinel's next INFO of it (every 10 s) shows the wrong role (+convert-to-slave);
        then its writes since the switch are dropped as it resyncs from the new primary."""
        old = self.primary_port()
        self.sentinels[0].call("SENTINEL", "FAILOVER", self.master_name)
        new = self.wait_failover(old, timeout)
        self.wait_in_sync(old, timeout)
        return old, new

    def restart_as_replica(self, port: int, timeout: float = 10.0) -> RedisNode:
        """Start the (killed) node on `port` again, empty, as a replica of the current primary.

        Only after the failover: the node must never come back as an empty primary."""
        node = self.nodes[port]
        if node.running:
            raise RuntimeError(f"{node!r} is still running")
        primary = self.primary_port()
        if primary == port:
            raise RuntimeError(f"the Sentinels still name port {port} primary: no failover yet")
        return node.start(replicaof=primary, timeout=timeout)

    def wait_in_sync(self, port: int, timeout: float = 30.0) -> None:
        """Wait until the replica on `port` finished its initial sync (`master_link_status:up`
        with the current primary) and every Sentinel sees it healthy and linked, so it is a
        safe candidate for the next failover."""
        node = self.nodes[port]

        def synced() -> bool:
            primary = self.primary_port()
            if primary == port:
                raise RuntimeError(
                    f"the Sentinels promoted port {port} while it was to sync as a replica "
                    "(a failover nobody asked for)"
                )
            if not node.in_sync_with(primary):
                return False
            for sentinel in self.sentinels:
                rows = sentinel.replicas(self.master_name)
                if not any(int(r["port"]) == port and _healthy(r) for r in rows):
                    return False
            return True

        self._wait(f"{node!r} in sync", synced, timeout)

    def _wait(self, what: str, check: Callable[[], T | None], timeout: float) -> T:
        try:
            return wait_until(what, check, timeout)
        except TimeoutError as exc:
            logs = "\n".join(f"{s!r}:\n{_tail(s.log, 1500)}" for s in self.sentinels)
            raise TimeoutError(f"{exc}\n{logs}") from None

    def stop(self) -> None:
        """Kill every process (Sentinels first, so none acts on the nodes' deaths)."""
        for process in [*self.sentinels, *self.nodes.values()]:
            process.kill()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)


class ClusterSetup:
    """A Redis Cluster of `primaries` primaries with `replicas` replicas each, made by
    `redis-cli --cluster create`, under `base_dir` (a temp dir removed at stop if not given)."""

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        primaries: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 2000,
    ) -> None:
        if primaries < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 primaries")
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="redis-cluster-"))
        self.primaries = primaries
        self.replicas = replicas
        ports = free_ports(primaries * (1 + replicas), cluster_bus=True)
        self.nodes = [
            RedisNode(p, self.base_dir, cluster_node_timeout_ms=node_timeout_ms) for p in ports
        ]

    def __enter__(self) -> ClusterSetup:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """REDIS_URL for REDIS_CLUSTER=true: the first node (clients discover the rest)."""
        return f"redis://{HOST}:{self.nodes[0].port}/0"

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def start(self, timeout: float = 60.0) -> ClusterSetup:
        """Start the nodes, join them, and return once every node says `cluster_state:ok`,
        knows every other node, and each replica is in sync with its primary."""
        for node in self.nodes:
            node.start()
        created = subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(n.address for n in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if created.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed ({created.returncode}):\n"
                f"{created.stdout[-3000:]}\n{created.stderr[-2000:]}"
            )

        def formed(node: RedisNode) -> bool:
            with node.client() as conn:
                info = conn.cluster("info")
            if info.get("cluster_state") != "ok":
                return False
            if int(info.get("cluster_known_nodes", 0)) != len(self.nodes):
                return False
            replication = node.info_replication()
            return bool(
                replication["role"] == "master" or replication["master_link_status"] == "up"
            )

        for node in self.nodes:
            wait_until(f"{node!r} to join the cluster", partial(formed, node), timeout)
        return self

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A sync cluster client (strings decoded unless told otherwise)."""
        options: dict[str, Any] = {"decode_responses": True, "socket_timeout": 5.0}
        options.update(kwargs)
        return redis.cluster.RedisCluster(host=HOST, port=self.nodes[0].port, **options)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)


@contextlib.contextmanager
def paused(node: _RedisProcess) -> Iterator[None]:
    """SIGSTOP `node` for the block (SIGCONT after, whatever happens)."""
    node.pause()
    try:
        yield
    finally:
        node.resume()
