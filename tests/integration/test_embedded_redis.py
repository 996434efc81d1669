"""The embedded Valkey: its append-only file, restarts, sharing and adoption across processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import redis

from app.adapters.redis.embedded import (
    AOF_DIR,
    DISCOVERY_FILE,
    Discovery,
    EmbeddedRedis,
    resolve_redis_url,
)
from app.settings import Settings
from tests.conftest import ROOT

pytest_plugins = ("tests.integration.redis_fixtures",)


def answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] != "Z"


def wait_dead(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def discovery(server_or_dir: EmbeddedRedis | Path) -> Discovery:
    base = server_or_dir.dir if isinstance(server_or_dir, EmbeddedRedis) else server_or_dir
    return msgspec.json.decode((base / DISCOVERY_FILE).read_bytes(), type=Discovery)


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    embedded = EmbeddedRedis(tmp_path)
    embedded.start()
    yield embedded
    embedded.stop()


# A second process on the same data directory, as `rag-pipeline worker` would be.
_OTHER_PROCESS = """
import sys, msgspec
from app.adapters.redis.embedded import EmbeddedRedis
server = EmbeddedRedis(sys.argv[1])
url = server.start()
print(msgspec.json.encode({"url": url, "pid": server.pid, "owns": server.owns_server}).decode(),
      flush=True)
if sys.argv[2] == "hang":
    import time; time.sleep(60)
server.stop()
"""


def run_other_process(data_dir: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _OTHER_PROCESS, str(data_dir), mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_starts_with_an_append_only_file_that_fsyncs_every_write(
    server: EmbeddedRedis, tmp_path: Path
) -> None:
    assert server.dir == tmp_path.resolve() / "redis"
    assert server.owns_server and server.pid is not None and alive(server.pid)
    client = redis.Redis.from_url(server.url)
    try:
        client.xadd("s", {"event": "x"})
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("dir")["dir"] == str(server.dir)
    finally:
        client.close()
    manifest = server.dir / AOF_DIR / "appendonly.aof.manifest"
    assert manifest.exists()
    aof = [p for p in (server.dir / AOF_DIR).iterdir() if p.name.endswith(".incr.aof")]
    assert aof and b"XADD" in b"".join(p.read_bytes() for p in aof).upper()
    # Loopback only, and not without the password.
    assert "@127.0.0.1:" in server.url
    with socket.create_connection(("127.0.0.1", discovery(server).port), timeout=2) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert sock.recv(64).startswith(b"-NOAUTH")
    assert (server.dir / DISCOVERY_FILE).stat().st_mode & 0o077 == 0


def test_data_survives_stop_and_start(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path)
    url = first.start()
    pid = first.pid
    assert pid is not None
    client = redis.Redis.from_url(url)
    entry_id = client.xadd("s", {"event": "kept"})
    client.close()
    first.stop()
    assert wait_dead(pid) and not answers(url)

    second = EmbeddedRedis(tmp_path)
    try:
        assert second.start() == url  # same port and password: old clients reconnect
        assert second.pid != pid
        client = redis.Redis.from_url(url)
        assert client.xrange("s") == [(entry_id, {b"event": b"kept"})]
        client.close()
    finally:
        second.stop()


def test_acknowledged_writes_survive_killing_valkey(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path)
    url = first.start()
    assert first.pid is not None
    client = redis.Redis.from_url(url)
    ids = [client.xadd("s", {"event": str(i)}) for i in range(200)]
    client.close()
    os.kill(first.pid, signal.SIGKILL)  # no chance to flush anything
    assert wait_dead(first.pid)
    first.stop()

    second = EmbeddedRedis(tmp_path)
    try:
        second.start()
        client = redis.Redis.from_url(second.url)
        assert [entry_id for entry_id, _ in client.xrange("s")] == ids
        client.close()
    finally:
        second.stop()


def test_a_second_instance_uses_the_running_server_and_leaves_it_running(
    server: EmbeddedRedis, tmp_path: Path
) -> None:
    other = EmbeddedRedis(tmp_path)
    assert other.start() == server.url
    assert other.pid == server.pid and not other.owns_server
    other.stop()
    assert answers(server.url)
    assert discovery(server).pid == server.pid


def test_another_process_finds_the_server(server: EmbeddedRedis, tmp_path: Path) -> None:
    process = run_other_process(tmp_path, "exit")
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    seen = msgspec.json.decode(out)
    assert seen == {"url": server.url, "pid": server.pid, "owns": False}
    assert answers(server.url)  # its exit did not stop our server


def test_a_server_orphaned_by_a_killed_owner_keeps_running_and_is_adopted(
    tmp_path: Path,
) -> None:
    process = run_other_process(tmp_path, "hang")
    assert process.stdout is not None
    seen = msgspec.json.decode(process.stdout.readline())
    assert seen["owns"] is True
    # The owner's whole process group dies at once, without a chance to stop its server;
    # the server, in a session of its own, is not in that group.
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(0.1)
    assert alive(seen["pid"]) and answers(seen["url"])

    adopter = EmbeddedRedis(tmp_path)
    assert adopter.start() == seen["url"]
    assert adopter.owns_server and adopter.pid == seen["pid"]
    assert discovery(tmp_path / "redis").owner_pid == os.getpid()
    adopter.stop()
    assert wait_dead(seen["pid"])
    assert discovery(tmp_path / "redis").pid is None


def test_a_stale_discovery_file_is_replaced(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path)
    first.start()
    first.stop()
    base = tmp_path / "redis"
    stale = msgspec.structs.replace(discovery(base), pid=dead_pid(), owner_pid=dead_pid())
    (base / DISCOVERY_FILE).write_bytes(msgspec.json.encode(stale))

    second = EmbeddedRedis(tmp_path)
    try:
        url = second.start()
        assert second.owns_server and second.pid not in (None, stale.pid)
        assert answers(url)
        assert discovery(base).pid == second.pid
    finally:
        second.stop()


def test_a_discovery_file_naming_another_server_is_not_trusted(
    server: EmbeddedRedis, tmp_path: Path
) -> None:
    # The file names a live process that is not the server at that URL (a reused pid).
    other_dir = tmp_path / "other"
    found = discovery(server)
    (other_dir / "redis").mkdir(parents=True)
    lie = msgspec.structs.replace(found, pid=os.getpid(), owner_pid=os.getpid(), owner="x")
    (other_dir / "redis" / DISCOVERY_FILE).write_bytes(msgspec.json.encode(lie))
    own = EmbeddedRedis(other_dir)
    try:
        own.start()
        assert own.owns_server and own.pid not in (server.pid, os.getpid())
        assert own.url != server.url
    finally:
        own.stop()
    assert answers(server.url)


def test_adopted_server_can_be_stopped_by_its_adopter_while_the_starter_lives(
    server: EmbeddedRedis, tmp_path: Path
) -> None:
    base = tmp_path / "redis"
    orphaned = msgspec.structs.replace(discovery(base), owner_pid=dead_pid(), owner="gone")
    (base / DISCOVERY_FILE).write_bytes(msgspec.json.encode(orphaned))
    adopter = EmbeddedRedis(tmp_path)
    adopter.start()
    assert adopter.owns_server
    pid = adopter.pid
    assert pid is not None
    adopter.stop()
    assert wait_dead(pid)
    server.stop()  # the original starter's stop is then harmless


def test_resolve_redis_url(tmp_path: Path) -> None:
    url, embedded = resolve_redis_url(Settings(redis_url="redis://cache:6379/1"))
    assert (url, embedded) == ("redis://cache:6379/1", None)
    url, embedded = resolve_redis_url(Settings(data_dir=str(tmp_path)))
    assert embedded is not None
    try:
        assert answers(url) and embedded.dir == tmp_path.resolve() / "redis"
    finally:
        embedded.stop()
    assert not answers(url)
