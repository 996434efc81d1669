"""Search latency while documents are ingested: one client searching without pause while
changed SciFact documents go in, plus the server's resident memory, steady and peak.

Starts `rag-pipeline serve` over a data dir holding the SciFact index (bench/search_latency.py
makes one), then, together: one client sends distinct SciFact queries one after another, and
an ingest sends --docs documents with changed text (so every chunk is embedded and written
anew, and the index gets new points to build HNSW for), in requests of 64, each waited for.
Searching goes on until the ingest is done and no HNSW build is pending. Reported: search
p50/p99/max during the ingest, searches answered, the server's RSS before, at its peak and
after. The data dir's index is changed by the run: point it at a copy.

    python bench/search_during_ingest.py --data-dir /tmp/scifact-copy [--docs 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import msgspec  # noqa: E402

from app.cli.corpus import read_beir_corpus, read_beir_queries  # noqa: E402
from app.client import AsyncClient, send_batches  # noqa: E402
from bench.search_latency import percentile, rss_mb  # noqa: E402
from tests.conftest import SCIFACT  # noqa: E402
from tests.e2e.server import Server  # noqa: E402


async def run(url: str, pid: int, docs: int, revision: str) -> dict[str, object]:
    queries = list(read_beir_queries(SCIFACT / "queries.jsonl").values())
    corpus = list(read_beir_corpus(SCIFACT / "corpus.jsonl"))[:docs]
    changed = [msgspec.structs.replace(d, text=f"{revision}. {d.text}") for d in corpus]
    latencies: list[float] = []
    starts: list[float] = []
    rss = {"before": rss_mb(pid), "peak": rss_mb(pid)}
    ingesting = True

    async def sample_rss() -> None:
        while True:
            rss["peak"] = max(rss["peak"], rss_mb(pid))
            await asyncio.sleep(0.2)

    async def search(http: httpx.AsyncClient) -> None:
        i = 0
        while ingesting:
            t0 = time.perf_counter()
            starts.append(time.time())
            response = await http.post("/api/v1/search", json={"query": queries[i % len(queries)]})
            latencies.append((time.perf_counter() - t0) * 1000)
            response.raise_for_status()
            i += 1

    sampler = asyncio.create_task(sample_rss())
    async with httpx.AsyncClient(base_url=url, timeout=60) as http, AsyncClient(url) as client:
        searching = asyncio.create_task(search(http))
        started = time.perf_counter()
        await send_batches(client, changed, 64, in_flight=2)
        ingested = time.perf_counter() - started
        # The last HNSW build starts after the last write; searches go on through it.
        await asyncio.sleep(15)
        ingesting = False
        await searching
    sampler.cancel()
    await asyncio.sleep(5)
    rss["after"] = rss_mb(pid)
    return {
        "documents": docs,
        "ingest_seconds": round(ingested, 1),
        "searches": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(max(latencies), 1),
        "over_250_ms": sum(1 for x in latencies if x > 250),
        "rss_mb": {k: round(v) for k, v in rss.items()},
        # When the slowest searches started, to match against the server's log.
        "slowest": [
            (time.strftime("%H:%M:%S", time.localtime(starts[i])), round(latencies[i]))
            for i in sorted(range(len(latencies)), key=latencies.__getitem__)[-5:]
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--revision", default=f"Revised {int(time.time())}")
    parser.add_argument("--env", action="append", default=[], help="K=V for the server")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    server = Server(args.data_dir, env=env).start(timeout=180)
    try:
        assert server.proc is not None
        result = asyncio.run(run(server.url, server.proc.pid, args.docs, args.revision))
        print(json.dumps(result, indent=2))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
