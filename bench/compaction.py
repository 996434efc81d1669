"""Compaction: Redis memory for 5,000 documents x 5 versions before and after, the compaction
rate, and what a compaction running in the serving process does to search latency.

A real `rag-pipeline serve` on the machine's Redis (a fresh key prefix per run) serves a small
searchable corpus (the first --searchable SciFact documents, ingested through the API). Beside
it the document stream gets --documents SciFact documents x --versions versions (small edits
of the real texts) appended straight to the stream behind the projector's position, so that
the bench measures the log and not embedding. One client searches SciFact queries
continuously: first for --seconds without compaction, then while `POST /api/v1/compact` runs.
Reported per run and as medians: used_memory and the stream's MEMORY USAGE before and after,
entries/s, and search p50/p95/max before and during.

    REDIS_URL=redis://127.0.0.1:6379/0 python bench/compaction.py [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.adapters.redis.streams import RedisEventLog  # noqa: E402
from app.cli.corpus import read_beir_corpus  # noqa: E402
from app.domain.events import DocumentUpserted, Streams  # noqa: E402
from app.services.projector import GROUP  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.conftest import SCIFACT  # noqa: E402
from tests.e2e.server import Server  # noqa: E402


def queries() -> list[str]:
    with (SCIFACT / "queries.jsonl").open() as f:
        return [json.loads(line)["text"] for line in f][:200]


async def fill(url: str, prefix: str, docs: list[dict[str, str]], versions: int) -> int:
    """Every document in `versions` versions, oldest first, as the write side appends them."""
    log = RedisEventLog(url, pool_size=4)
    stream = Streams(prefix).documents
    appended = 0
    try:
        for v in range(versions):
            batch = [
                DocumentUpserted(
                    tenant="bench",
                    doc_id=d["id"],
                    version=f"v{v}",
                    title=d["title"],
                    text=f"{d['text']} (revision {v})",
                    metadata={"revision": v},
                    chunk_size=200,
                    chunk_overlap=40,
                    at=time.time(),
                    traceparent=None,
                )
                for d in docs
            ]
            for start in range(0, len(batch), 200):
                appended += len(await log.append_many(stream, batch[start : start + 200]))
    finally:
        await log.close()
    return appended


def search_load(url: str, texts: list[str], stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        i = 0
        while not stop.is_set():
            started = time.perf_counter()
            r = http.post("/api/v1/search", json={"query": texts[i % len(texts)], "top_k": 10})
            r.raise_for_status()
            out.append((time.perf_counter() - started) * 1000)
            i += 1


def percentiles(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "p50": round(statistics.median(ordered), 1),
        "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 1),
        "max": round(ordered[-1], 1),
        "n": len(ordered),
    }


def run_once(args: argparse.Namespace, corpus: list[dict[str, str]], texts: list[str]) -> dict:  # type: ignore[type-arg]
    url = Settings.from_env().redis_url
    prefix = f"bench:compaction:{uuid.uuid4().hex[:8]}:"
    raw = redis.Redis.from_url(url)
    stream = Streams(prefix).documents
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(
            Path(tmp) / "data",
            env={"RAG_STREAM_PREFIX": prefix, "RAG_COMPACT_MIN_ENTRIES": "0"},
        ).start(timeout=120)
        try:
            with httpx.Client(base_url=server.url, timeout=600) as http:
                searchable = [
                    {"id": d["id"], "title": d["title"], "text": d["text"]}
                    for d in corpus[: args.searchable]
                ]
                for start in range(0, len(searchable), 64):
                    r = http.post(
                        "/api/v1/ingest?wait=true",
                        json={"documents": searchable[start : start + 64]},
                    )
                    r.raise_for_status()
                # The padding goes behind the projector: position the group at the head.
                used_empty = int(raw.info("memory")["used_memory"])
                appended = asyncio.run(fill(url, prefix, corpus[: args.documents], args.versions))
                raw.xgroup_setid(stream, GROUP, "$")
                used_before = int(raw.info("memory")["used_memory"])
                stream_before = int(raw.memory_usage(stream, samples=0) or 0)

                baseline: list[float] = []
                stop = threading.Event()
                loader = threading.Thread(
                    target=search_load, args=(server.url, texts, stop, baseline)
                )
                loader.start()
                time.sleep(args.seconds)
                stop.set()
                loader.join()

                during: list[float] = []
                stop = threading.Event()
                loader = threading.Thread(
                    target=search_load, args=(server.url, texts, stop, during)
                )
                loader.start()
                started = http.post("/api/v1/compact")
                started.raise_for_status()
                job_id = started.json()["job_id"]
                while True:
                    job = http.get(f"/api/v1/compact/{job_id}").json()
                    if job["phase"] in ("done", "failed"):
                        break
                    time.sleep(0.05)
                stop.set()
                loader.join()
                assert job["phase"] == "done", job
                used_after = int(raw.info("memory")["used_memory"])
                stream_after = int(raw.memory_usage(stream, samples=0) or 0)
        finally:
            server.stop()
            keys = list(raw.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                raw.delete(*keys)
            raw.close()
    return {
        "appended": appended,
        "entries_before": job["entries_before"],
        "entries_after": job["entries_after"],
        "compaction_seconds": job["seconds"],
        "entries_per_second": round(job["entries_before"] / job["seconds"]),
        "stream_mb_before": round(stream_before / 2**20, 1),
        "stream_mb_after": round(stream_after / 2**20, 1),
        "used_memory_mb_over_empty_before": round((used_before - used_empty) / 2**20, 1),
        "used_memory_mb_over_empty_after": round((used_after - used_empty) / 2**20, 1),
        "search_before": percentiles(baseline),
        "search_during": percentiles(during),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--documents", type=int, default=5000)
    parser.add_argument("--versions", type=int, default=5)
    parser.add_argument("--searchable", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    corpus = [
        {"id": d.id, "title": d.title, "text": d.text}
        for d in read_beir_corpus(SCIFACT / "corpus.jsonl")
    ]
    texts = queries()
    runs = []
    for n in range(args.runs):
        result = run_once(args, corpus, texts)
        print(json.dumps({"run": n + 1, **result}), flush=True)
        runs.append(result)
    medians = {
        key: statistics.median(r[key] for r in runs)
        for key in runs[0]
        if isinstance(runs[0][key], int | float)
    }
    for phase in ("search_before", "search_during"):
        medians[phase] = {
            q: statistics.median(r[phase][q] for r in runs) for q in ("p50", "p95", "max")
        }
    print(json.dumps({"median": medians}, indent=1))


if __name__ == "__main__":
    main()
