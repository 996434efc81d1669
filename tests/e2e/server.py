"""Runs the real `rag-pipeline serve` (or `worker`) in a subprocess on a free port.

With REDIS_URL set (CI: the machine's Redis), every data directory gets its own key prefix,
so servers never share streams or consumer groups; `drop_keys()` deletes what they wrote.
Without it, each data directory has its own embedded Valkey.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


REDIS_URL = os.environ.get("REDIS_URL", "").strip()
# Every prefix a Server used on the machine's Redis in this process, for drop_keys().
PREFIXES: set[str] = set()


def prefix_for(data_dir: Path) -> str:
    """The key prefix of a data directory's streams on a shared Redis: stable across restarts."""
    return f"test:e2e:{hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]}:"


def drop_keys(prefixes: set[str]) -> None:
    if not REDIS_URL or not prefixes:
        return
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        for prefix in prefixes:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


class Server:
    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str] | None = None,
        command: str = "serve",
        port: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.env = dict(env or {})
        if REDIS_URL and "RAG_STREAM_PREFIX" not in self.env:
            self.env["RAG_STREAM_PREFIX"] = prefix_for(data_dir)
            PREFIXES.add(self.env["RAG_STREAM_PREFIX"])
        self.command = command
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{command}-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def child_env(self) -> dict[str, str]:
        """The environment the process runs with."""
        return {**os.environ, **self.env}

    def start(self, timeout: float = 60.0) -> Server:
        """Launch, then wait until /ready answers 200."""
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> Server:
        """Start the process and return at once (a crash loop kills it at any moment)."""
        env = self.child_env()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app",
                self.command,
                "--port",
                str(self.port),
                "--host",
                "127.0.0.1",
                "--data-dir",
                str(self.data_dir),
            ],
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, timeout: float = 60.0) -> Server:
        assert self.proc is not None, "not launched"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise RuntimeError(
                    f"{self.command} exited early ({code}):\n{self.log.read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL, as a crash: no signal handler, no cleanup, nothing flushed."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)
