"""Batch search against single searches over HTTP, with the SciFact corpus loaded.

Starts `rag-pipeline serve` on a free port over DATA_DIR (ingesting the corpus first if the
index lacks it), then answers groups of --size distinct SciFact queries three ways: one
search after another, all at once as concurrent requests, and as one POST
/api/v1/search/batch. Reports the median wall time of a group for each, over --groups
groups and --runs runs.

    python bench/batch_search.py --data-dir /tmp/scifact-data [--size 16] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.cli.corpus import read_beir_queries  # noqa: E402
from app.cli.evaluation import ensure_corpus  # noqa: E402
from app.client import AsyncClient  # noqa: E402
from tests.conftest import SCIFACT  # noqa: E402
from tests.e2e.server import Server  # noqa: E402


async def sequential(http: httpx.AsyncClient, group: list[str]) -> float:
    started = time.perf_counter()
    for query in group:
        (await http.post("/api/v1/search", json={"query": query})).raise_for_status()
    return time.perf_counter() - started


async def concurrent(http: httpx.AsyncClient, group: list[str]) -> float:
    started = time.perf_counter()
    answers = await asyncio.gather(
        *(http.post("/api/v1/search", json={"query": query}) for query in group)
    )
    for answer in answers:
        answer.raise_for_status()
    return time.perf_counter() - started


async def batched(http: httpx.AsyncClient, group: list[str]) -> float:
    started = time.perf_counter()
    answer = await http.post(
        "/api/v1/search/batch", json={"searches": [{"query": query} for query in group]}
    )
    answer.raise_for_status()
    return time.perf_counter() - started


async def measure(url: str, groups: list[list[str]]) -> dict[str, float]:
    limits = httpx.Limits(max_connections=len(groups[0]))
    times: dict[str, list[float]] = {"sequential": [], "concurrent": [], "batch": []}
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        for group in groups:
            for name, way in (
                ("sequential", sequential),
                ("concurrent", concurrent),
                ("batch", batched),
            ):
                times[name].append(await way(http, group))
    return {f"{name}_ms": statistics.median(v) * 1000 for name, v in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp()) / "data"
    queries = list(read_beir_queries(SCIFACT / "queries.jsonl").values())
    needed = args.size * args.groups
    env = {"RAG_MAX_BATCH_SEARCHES": str(max(16, args.size))}
    server = Server(data_dir, env=env).start(timeout=120)
    try:

        async def load() -> None:
            async with AsyncClient(server.url) as client:
                await ensure_corpus(client, SCIFACT)

        asyncio.run(load())
        warm = [queries[i : i + args.size] for i in range(0, 4 * args.size, args.size)]
        asyncio.run(measure(server.url, warm))
        runs = []
        for run in range(args.runs):
            start = (run * needed) % max(1, len(queries) - needed)
            chunk = queries[start : start + needed]
            groups = [chunk[i : i + args.size] for i in range(0, needed, args.size)]
            runs.append(asyncio.run(measure(server.url, groups)))
        result = {key: round(statistics.median(r[key] for r in runs), 1) for key in runs[0]}
        print(json.dumps({"size": args.size, "groups": args.groups, "runs": args.runs, **result}))
    finally:
        server.stop()
        if args.data_dir is None:
            shutil.rmtree(data_dir.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
