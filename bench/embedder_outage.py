"""Search and ingest while the embeddings API answers 429 for 30 s, and recovery after it.

Starts an OpenAI-wire embeddings server (tests/openai_wire.py) and `rag-pipeline serve` with
RAG_EMBEDDER=openai and the default breaker settings. After loading a few documents, the API
answers every request with 429 (Retry-After: 1) for --outage seconds while searches arrive
at --rate a second (open loop) and one document is ingested a second. Reported per run:
search latency of the refused searches (p50, p99, max; all of them, and those after the
breaker opened), how many reached the API, and the time from recovery until every document
ingested during the outage was indexed, with the dead-letter count.

    python bench/embedder_outage.py [--runs 3] [--outage 30] [--rate 20] [--env K=V ...]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import DOCS  # noqa: E402
from tests.e2e.load import Outcome, open_loop  # noqa: E402
from tests.e2e.server import PREFIXES, Server, drop_keys  # noqa: E402
from tests.openai_wire import FakeEmbeddings, Reply  # noqa: E402

DIM = 256


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def one_run(args: argparse.Namespace, extra_env: dict[str, str]) -> dict[str, Any]:
    with FakeEmbeddings(dim=DIM) as fake, tempfile.TemporaryDirectory() as tmp:
        env = {
            "RAG_EMBEDDER": "openai",
            "OPENAI_BASE_URL": fake.url,
            "OPENAI_API_KEY": "test-key",
            "RAG_EMBEDDING_MODEL": "bench-model",
            "RAG_EMBEDDING_DIMENSIONS": str(DIM),
            **extra_env,
        }
        server = Server(Path(tmp) / "data", env).start()
        try:
            with server.client() as http:
                assert http.post("/api/v1/ingest?wait=true", json={"documents": DOCS}).is_success
                fake.outage = Reply(status=429, retry_after=1)
                outage_started = time.monotonic()
                sent_before = fake.requests_count()
                ingested: list[str] = []
                done = threading.Event()

                def ingest_one_a_second() -> None:
                    # Its own thread and client: a blocking call on the load generator's loop
                    # would delay reading the searches' answers and inflate their latency.
                    with server.client() as writer:
                        while not done.wait(1.0 if ingested else 0.0):
                            doc_id = f"outage-{len(ingested)}"
                            response = writer.post(
                                "/api/v1/ingest",
                                json={"documents": [{"id": doc_id, "text": f"written {doc_id}"}]},
                            )
                            assert response.status_code == 202, response.text
                            ingested.append(doc_id)

                writer_thread = threading.Thread(target=ingest_one_a_second)
                writer_thread.start()
                try:
                    outcomes: list[Outcome] = asyncio.run(
                        open_loop(
                            "127.0.0.1",
                            server.port,
                            "/api/v1/search",
                            lambda i: {"query": f"volcano lava {i}"},
                            rate=args.rate,
                            seconds=args.outage,
                            timeout=30,
                        )
                    )
                finally:
                    done.set()
                    writer_thread.join()
                api_calls = fake.requests_count() - sent_before
                fake.outage = None
                recovered = time.monotonic()
                pending = set(ingested)
                while pending and time.monotonic() - recovered < 120:
                    for doc_id in list(pending):
                        got = http.get(f"/api/v1/documents/{doc_id}").json()
                        if got["status"] == "indexed":
                            pending.discard(doc_id)
                        elif got["status"] == "failed":
                            raise SystemExit(f"{doc_id} failed: {got}")
                    time.sleep(0.1)
                indexed_after = time.monotonic() - recovered
                dead = http.get("/api/v1/stats").json()["events"]["dead_letters"]
        finally:
            server.stop()
            drop_keys(PREFIXES)
    statuses = [o.status for o in outcomes]
    refused = [o for o in outcomes if o.status == 503 and o.latency_ms is not None]
    latencies = [o.latency_ms for o in refused if o.latency_ms is not None]
    # The breaker opens after RAG_EMBEDDER_BREAKER_FAILURES failed calls; count from the
    # first refusal that did not reach the API (its message names the breaker).
    opened_at = next(
        (o.started for o in refused if b"circuit breaker open" in o.body), outage_started
    )
    after = [o.latency_ms for o in refused if o.started >= opened_at and o.latency_ms]
    return {
        "searches": len(outcomes),
        "503": statuses.count(503),
        "other": len(outcomes) - statuses.count(503),
        "retry_after_missing": sum(1 for o in refused if not o.retry_after),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
        "p99_after_open_ms": percentile(after, 99) if after else float("nan"),
        "api_calls_during_outage": api_calls,
        "ingested_during_outage": len(ingested),
        "unindexed": len(pending),
        "indexed_within_s": round(indexed_after, 2),
        "dead_letters": dead,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--outage", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--env", action="append", default=[], help="K=V for the server")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    runs = []
    for n in range(args.runs):
        result = one_run(args, extra)
        print(f"run {n + 1}: {result}", flush=True)
        runs.append(result)
    keys = ["p50_ms", "p99_ms", "max_ms", "p99_after_open_ms", "indexed_within_s"]
    print("medians:", {k: round(statistics.median(r[k] for r in runs), 2) for k in keys})
    print(
        "totals:",
        {
            k: sum(r[k] for r in runs)
            for k in (
                "searches",
                "503",
                "other",
                "retry_after_missing",
                "unindexed",
                "dead_letters",
                "ingested_during_outage",
                "api_calls_during_outage",
            )
        },
    )


if __name__ == "__main__":
    main()
