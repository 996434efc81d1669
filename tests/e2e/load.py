"""An open-loop HTTP load generator on raw sockets, for shutdown tests and benchmarks.

Each request opens its own connection and records when the connection was accepted, so
"refused" (never accepted: the listener was closed) is told apart from "dropped" (accepted,
request sent, no response), and latency is measured from the moment of sending.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Outcome:
    started: float  # monotonic, when the request was due
    connected: float | None  # when the connection was accepted; None if refused
    status: int | None  # None: refused or dropped
    latency_ms: float | None
    error: str | None = None
    body: bytes = b""
    retry_after: str | None = None

    @property
    def kind(self) -> str:
        if self.status is not None:
            return str(self.status)
        return "refused" if self.connected is None else "dropped"


async def request(host: str, port: int, path: str, payload: object, timeout: float) -> Outcome:
    started = time.monotonic()
    data = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\nconnection: close\r\n\r\n"
    ).encode()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        return Outcome(started, None, None, None, f"{type(exc).__name__}: {exc}")
    connected = time.monotonic()
    try:
        writer.write(head + data)
        await writer.drain()
        sent = time.monotonic()
        raw = await asyncio.wait_for(reader.read(), timeout)
    except (OSError, TimeoutError) as exc:
        return Outcome(started, connected, None, None, f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()
    latency = (time.monotonic() - sent) * 1000
    line, _, rest = raw.partition(b"\r\n")
    parts = line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return Outcome(started, connected, None, None, f"no response ({len(raw)} bytes)")
    headers, _, body = rest.partition(b"\r\n\r\n")
    retry_after = None
    for header in headers.split(b"\r\n"):
        key, _, value = header.partition(b":")
        if key.strip().lower() == b"retry-after":
            retry_after = value.strip().decode()
    return Outcome(started, connected, int(parts[1]), latency, None, body, retry_after)


async def open_loop(
    host: str,
    port: int,
    path: str,
    payload: Callable[[int], object],
    *,
    rate: float,
    seconds: float,
    timeout: float = 30.0,
    at: Callable[[float], None] | None = None,
) -> list[Outcome]:
    """Send `rate` requests a second for `seconds`, on schedule whatever the answers take;
    `at(elapsed)` is called before each send (to trigger events mid-run)."""
    tasks = []
    start = time.monotonic()
    n = int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        if at is not None:
            at(time.monotonic() - start)
        tasks.append(asyncio.ensure_future(request(host, port, path, payload(i), timeout)))
    return list(await asyncio.gather(*tasks))


def searches_through_sigterm(
    proc: subprocess.Popen[bytes], port: int, *, rate: float, seconds: float, sigterm_at: float
) -> tuple[list[Outcome], float]:
    """Open-loop searches at `rate` for `seconds` against the server `proc` on `port`, which
    is sent SIGTERM once `sigterm_at` seconds in: the outcomes, and when the signal went."""
    signalled: list[float] = []

    def at(elapsed: float) -> None:
        if elapsed >= sigterm_at and not signalled:
            signalled.append(time.monotonic())
            proc.send_signal(signal.SIGTERM)

    outcomes = asyncio.run(
        open_loop(
            "127.0.0.1",
            port,
            "/api/v1/search",
            lambda i: {"query": f"volcano {i}"},
            rate=rate,
            seconds=seconds,
            at=at,
        )
    )
    return outcomes, signalled[0]


def in_flight_at(outcomes: list[Outcome], moment: float) -> list[Outcome]:
    """The requests connected before `moment` and answered after it."""
    return [
        o
        for o in outcomes
        if o.connected is not None
        and o.latency_ms is not None
        and o.connected < moment < o.connected + o.latency_ms / 1000
    ]
