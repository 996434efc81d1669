"""What recording retrieval events costs search: p50 with RAG_RECORD_RETRIEVALS on vs off.

Two `rag-pipeline serve` processes with the same small SciFact corpus (the first --docs
documents), one recording every search and one not, both warm; one client sends the same
distinct queries to each in turn, alternating which goes first, --runs rounds. Reported:
the median over rounds of each side's p50 and p95 (ms, client-side, HTTP included), and the
median of the per-round p50 differences. Target: recording adds <= 1 ms to p50.

    python bench/retrieval_event_cost.py [--docs 300] [--runs 7] [--queries 150]

Each server has its own embedded Valkey (AOF, appendfsync always) unless REDIS_URL is set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.cli.corpus import read_beir_queries  # noqa: E402
from tests.conftest import SCIFACT  # noqa: E402
from tests.e2e.server import PREFIXES, Server, drop_keys  # noqa: E402

DATASET = SCIFACT


def nearest_rank(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[max(1, -(-p * len(ordered) // 100)) - 1]


def load(url: str, docs: list[dict[str, str]]) -> None:
    with httpx.Client(base_url=url, timeout=300) as http:
        for start in range(0, len(docs), 50):
            response = http.post(
                "/api/v1/ingest?wait=true", json={"documents": docs[start : start + 50]}
            )
            response.raise_for_status()


def run(url: str, queries: list[str]) -> tuple[float, float, int]:
    """p50 and p95 in ms of one client's sequential searches, and the number recorded."""
    latencies = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for query in queries:
            t0 = time.perf_counter()
            response = http.post("/api/v1/search", json={"query": query})
            latencies.append((time.perf_counter() - t0) * 1000)
            response.raise_for_status()
    return nearest_rank(latencies, 50), nearest_rank(latencies, 95), len(latencies)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--queries", type=int, default=150, help="distinct queries per run")
    parser.add_argument("--dataset", type=Path, default=DATASET, help="a BEIR folder")
    args = parser.parse_args()
    dataset: Path = args.dataset

    docs = []
    with (dataset / "corpus.jsonl").open() as corpus:
        for line in corpus:
            row = json.loads(line)
            docs.append({"id": row["_id"], "title": row.get("title", ""), "text": row["text"]})
            if len(docs) == args.docs:
                break
    queries = list(read_beir_queries(dataset / "queries.jsonl").values())

    with tempfile.TemporaryDirectory(prefix="rag-bench-events-") as tmp:
        servers = {
            "on": Server(Path(tmp) / "on" / "data", env={"RAG_RECORD_RETRIEVALS": "true"}),
            "off": Server(Path(tmp) / "off" / "data", env={"RAG_RECORD_RETRIEVALS": "false"}),
        }
        try:
            for server in servers.values():
                server.data_dir.parent.mkdir(parents=True)
                server.start(timeout=120)
                load(server.url, docs)
                run(server.url, queries[:30])  # warm-up: model, index, connections
            p50 = {"on": [], "off": []}  # type: dict[str, list[float]]
            p95 = {"on": [], "off": []}  # type: dict[str, list[float]]
            diffs = []
            for round_ in range(args.runs):
                start = 30 + (round_ * args.queries) % (len(queries) - 30)
                chunk = (queries * 2)[start : start + args.queries]
                order = ("on", "off") if round_ % 2 == 0 else ("off", "on")
                for side in order:
                    a, b, _ = run(servers[side].url, chunk)
                    p50[side].append(a)
                    p95[side].append(b)
                diffs.append(p50["on"][-1] - p50["off"][-1])
                print(
                    f"round {round_}: p50 on {p50['on'][-1]:.2f} ms, off {p50['off'][-1]:.2f} ms",
                    file=sys.stderr,
                )
            with httpx.Client(base_url=servers["on"].url) as http:
                recorder = http.get("/api/v1/stats").json()["recorder"]
            result = {
                "p50_ms": {side: statistics.median(v) for side, v in p50.items()},
                "p95_ms": {side: statistics.median(v) for side, v in p95.items()},
                "p50_added_ms_median_of_rounds": statistics.median(diffs),
                "p50_added_ms_per_round": [round(d, 3) for d in diffs],
                "recorded": recorder,
                "runs": args.runs,
                "queries_per_run": args.queries,
                "docs": len(docs),
                "event_log": "REDIS_URL" if PREFIXES else "embedded Valkey (appendfsync always)",
            }
            print(json.dumps(result, indent=2))
        finally:
            for server in servers.values():
                server.stop()
            drop_keys(PREFIXES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
