"""Search latency, throughput and server CPU per search over HTTP, with SciFact loaded.

Starts `rag-pipeline serve` on a free port over DATA_DIR (ingesting the corpus first if the
index lacks it, or only its first --docs documents), then runs distinct SciFact queries: one
client sequentially, then 8 concurrent clients. Over the 8-client phase it reads the CPU time
(utime + stime, /proc/PID/stat) of the server and of its child processes (the embedded Valkey
that records retrievals), and divides it by the searches served: CPU ms per search, which a
shared machine's load distorts far less than wall time. Each scenario runs --runs times; the
medians are reported, with the server's RSS.

    python bench/search_latency.py --data-dir /tmp/scifact-data [--runs 5] [--env K=V ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.cli.corpus import read_beir_corpus, read_beir_queries  # noqa: E402
from app.cli.evaluation import ensure_corpus  # noqa: E402
from app.client import AsyncClient, send_batches  # noqa: E402
from tests.conftest import SCIFACT  # noqa: E402
from tests.e2e.server import Server  # noqa: E402

DATASET = SCIFACT


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, waited_children: bool = False) -> float:
    """utime + stime of one live process, in seconds (fields 14 and 15 of /proc/PID/stat),
    plus cutime + cstime (16 and 17: its children that ended and were waited for)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    ticks = int(fields[11]) + int(fields[12])
    if waited_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def children(pid: int) -> list[int]:
    """Every live descendant of a process."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            direct = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in direct:
            out += [child, *children(child)]
    return out


def cpu_snapshot(pid: int) -> dict[int, float]:
    """CPU seconds so far of the server (with its ended children) and of each live child."""
    out = {pid: cpu_seconds(pid, waited_children=True)}
    for child in children(pid):
        with contextlib.suppress(OSError):  # it ended between the listing and the read
            out[child] = cpu_seconds(child)
    return out


def cpu_spent(before: dict[int, float], after: dict[int, float], server: int) -> dict[str, float]:
    """CPU seconds between two snapshots: the server's, and its children's (a child that
    ended in between is counted in the server's cutime if it was waited for, else lost)."""
    kids = sum(t - before.get(p, 0.0) for p, t in after.items() if p != server)
    return {"server": after[server] - before[server], "children": kids}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def one_client(url: str, queries: list[str], params: dict[str, Any]) -> dict[str, float]:
    latencies = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for q in queries:
            t0 = time.perf_counter()
            r = await http.post("/api/v1/search", json={"query": q, **params})
            latencies.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
    return {"p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95)}


async def concurrent(
    url: str, queries: list[str], params: dict[str, Any], clients: int
) -> dict[str, float]:
    latencies: list[float] = []
    cursor = iter(queries)

    async def worker(http: httpx.AsyncClient) -> None:
        for q in cursor:
            t0 = time.perf_counter()
            r = await http.post("/api/v1/search", json={"query": q, **params})
            latencies.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
    }


def wrk_concurrent(
    url: str, queries: list[str], params: dict[str, Any], clients: int, seconds: int
) -> dict[str, float]:
    """The same scenario driven by wrk (C, two threads): far less client CPU taken from the
    two cores the server runs on than a Python client needs."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
        for q in queries:
            handle.write(json.dumps({"query": q, **params}) + "\n")
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{clients}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(Path(__file__).with_name("wrk_search.lua")),
            url,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "WRK_BODIES": handle.name},
        check=True,
    ).stdout
    Path(handle.name).unlink()
    stats = json.loads(out.strip().splitlines()[-1])
    if stats["errors"]:
        raise RuntimeError(f"wrk saw {stats['errors']} errors")
    return {
        "requests": stats["requests"],
        "rps": stats["requests"] / stats["seconds"],
        "p50_ms": stats["p50_ms"],
        "p95_ms": stats["p95_ms"],
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--queries", type=int, default=300, help="distinct queries per run")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=15, help="length of a wrk run")
    parser.add_argument(
        "--docs",
        type=int,
        default=0,
        help="ingest only the first N corpus documents (a small index, for profiling "
        "per-request overheads); 0: the whole corpus",
    )
    parser.add_argument("--params", default="{}", help="JSON merged into every search body")
    parser.add_argument("--env", action="append", default=[], help="K=V for the server")
    args = parser.parse_args()

    env = dict(item.split("=", 1) for item in args.env)
    server = Server(args.data_dir, env=env).start(timeout=120)
    assert server.proc is not None
    params = json.loads(args.params)
    try:

        async def load() -> None:
            async with AsyncClient(server.url) as client:
                if args.docs:
                    docs = list(read_beir_corpus(DATASET / "corpus.jsonl"))[: args.docs]
                    await send_batches(client, docs, 64)
                else:
                    await ensure_corpus(client, DATASET)

        asyncio.run(load())
        queries = list(read_beir_queries(DATASET / "queries.jsonl").values())
        asyncio.run(one_client(server.url, queries[:50], params))  # warm-up
        single, multi = [], []
        for run in range(args.runs):
            # Distinct queries in every run, so no run is served from a warm cache.
            start = (run * args.queries) % len(queries)
            chunk = (queries * 2)[start : start + args.queries]
            single.append(asyncio.run(one_client(server.url, chunk, params)))
            before = cpu_snapshot(server.proc.pid)
            if shutil.which("wrk"):
                multi.append(wrk_concurrent(server.url, chunk, params, args.clients, args.seconds))
            else:
                multi.append(asyncio.run(concurrent(server.url, chunk, params, args.clients)))
            after = cpu_snapshot(server.proc.pid)
            served = multi[-1]["requests"]
            for part, spent in cpu_spent(before, after, server.proc.pid).items():
                multi[-1][f"cpu_ms_per_search_{part}"] = spent * 1000 / served
            multi[-1]["cpu_ms_per_search"] = (
                multi[-1]["cpu_ms_per_search_server"] + multi[-1]["cpu_ms_per_search_children"]
            )
            print(json.dumps(multi[-1]), file=sys.stderr)
        result = {
            "one_client": {k: statistics.median(r[k] for r in single) for k in single[0]},
            f"{args.clients}_clients": {
                k: statistics.median(r[k] for r in multi) for k in multi[0]
            },
            "server_rss_mb": rss_mb(server.proc.pid),
            "load_generator": "wrk -t2" if shutil.which("wrk") else "python httpx",
            "load_average": os.getloadavg(),
            "runs": args.runs,
            "queries_per_run": args.queries,
            "params": params,
        }
        print(json.dumps(result, indent=2))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
