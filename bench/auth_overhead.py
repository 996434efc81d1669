"""What API keys and rate limiting cost a request, in process and over HTTP.

In process: KeyRing.authenticate with --keys entries (SHA-256 + a constant-time comparison with
every entry) and one RedisRateLimiter.take (the Lua token bucket) against REDIS_URL.
Over HTTP: two servers on the same small corpus, one open and one with a keys file; rounds
alternate between them (the machine is shared and noisy), and the medians are reported for a
search and for a cheap request (GET of an unknown document: one Redis read).

    REDIS_URL=redis://127.0.0.1:6379/0 python bench/auth_overhead.py [--rounds 5] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.adapters.redis.rate_limit import RedisRateLimiter  # noqa: E402
from app.api.keys import KeyRing, digest, new_key  # noqa: E402
from tests.e2e.conftest import DOCS  # noqa: E402
from tests.e2e.server import PREFIXES, REDIS_URL, Server, drop_keys  # noqa: E402

QUERIES = ["volcanic ash", "glucose uptake", "reliable byte stream", "backup snapshots"]


def in_process(keys: int, repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "keys.json"
        made = [new_key() for _ in range(keys)]
        path.write_text(
            json.dumps(
                {"keys": [{"sha256": digest(k), "tenant": "t", "scopes": ["search"]} for k in made]}
            )
        )
        ring = KeyRing(path, reload_seconds=3600)
        last = made[-1]
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            ring.authenticate(last)
            times.append((time.perf_counter() - t0) * 1e6)
    out = {f"authenticate_{keys}_keys_us": statistics.median(times)}
    if REDIS_URL:
        out["rate_limit_take_us"] = asyncio.run(_takes(repeats))
    return out


async def _takes(repeats: int) -> float:
    prefix = f"bench:{uuid.uuid4().hex}:"
    limiter = RedisRateLimiter(REDIS_URL, prefix=prefix)
    times = []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            await limiter.take("k", rate=1e6, burst=1_000_000)
            times.append((time.perf_counter() - t0) * 1e6)
    finally:
        await limiter.close()
        drop_keys({prefix})
    return statistics.median(times)


def timed(http: httpx.Client, requests: int, search: bool) -> float:
    latencies = []
    for i in range(requests):
        t0 = time.perf_counter()
        if search:
            r = http.post("/api/v1/search", json={"query": QUERIES[i % len(QUERIES)]})
        else:
            r = http.get(f"/api/v1/documents/absent-{i}")
        latencies.append((time.perf_counter() - t0) * 1000)
        assert r.status_code in (200, 404), r.text
    return statistics.median(latencies)


def over_http(rounds: int, requests: int) -> dict[str, float]:
    key = new_key()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.json"
        keys.write_text(
            json.dumps(
                {
                    "keys": [
                        {
                            "sha256": hashlib.sha256(key.encode()).hexdigest(),
                            "tenant": "bench",
                            "scopes": ["search", "ingest"],
                            "rate_per_second": 1e6,
                            "burst": 1_000_000,
                        }
                    ]
                }
            )
        )
        servers = {
            "open": (Server(Path(tmp) / "open" / "data"), {}),
            "keys": (
                Server(Path(tmp) / "keys" / "data", env={"RAG_API_KEYS_FILE": str(keys)}),
                {"Authorization": f"Bearer {key}"},
            ),
        }
        try:
            for server, headers in servers.values():
                server.data_dir.parent.mkdir(parents=True)
                server.start()
                with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
                    r = http.post("/api/v1/ingest?wait=true", json={"documents": DOCS})
                    assert r.status_code == 200, r.text
                    timed(http, 20, search=True)  # warm up
            for _ in range(rounds):
                for name, (server, headers) in servers.items():
                    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
                        for search in (True, False):
                            what = "search" if search else "get_document"
                            results.setdefault(f"{what}_p50_ms_{name}", []).append(
                                timed(http, requests, search)
                            )
        finally:
            for server, _ in servers.values():
                server.stop()
            drop_keys(PREFIXES)
    return {name: round(statistics.median(values), 3) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--keys", type=int, default=1000)
    args = parser.parse_args()
    figures = {**in_process(args.keys, 2000), **over_http(args.rounds, args.requests)}
    print(json.dumps({k: round(v, 3) for k, v in figures.items()}, indent=2))


if __name__ == "__main__":
    main()
