"""What tracing and metrics add to search latency: p50 with both on versus both off.

Starts two `rag-pipeline serve` processes over the same few hundred SciFact documents (each
its own data directory, ingested once):

- on:  every span sampled (OTEL_TRACES_SAMPLER=always_on) and exported over OTLP/HTTP
       (http/protobuf, batch processor) to a receiver this script runs on a free port, which
       answers 200 and keeps the bodies (decoded only after timing, to count the spans);
       metrics on (RAG_METRICS=true);
- off: OTEL_SDK_DISABLED=true and RAG_METRICS=false.

Runs alternate on/off (ABBA order, so neither always goes first), each sending the same
SciFact queries one at a time from one client; p50 per run, medians over --runs runs.

    python bench/telemetry_overhead.py [--docs 300] [--queries 200] [--runs 7] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.corpus import read_beir_corpus, read_beir_queries  # noqa: E402
from tests.e2e.server import PREFIXES, Server, drop_keys  # noqa: E402

DATASET = Path("/work/shared/datasets/scifact-train")


class Receiver:
    """An OTLP/HTTP endpoint that accepts every export and keeps the raw bodies."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> int:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        count = 0
        for body in self.bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            count += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return count


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def run_queries(url: str, queries: list[str]) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for q in queries:
            t0 = time.perf_counter()
            r = await http.post("/api/v1/search", json={"query": q})
            latencies.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
    return latencies


def ingest(url: str, docs: list[dict[str, Any]]) -> None:
    with httpx.Client(base_url=url, timeout=600) as http:
        for start in range(0, len(docs), 64):
            r = http.post("/api/v1/ingest?wait=true", json={"documents": docs[start : start + 64]})
            r.raise_for_status()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()

    docs = [
        {"id": d.id, "title": d.title, "text": d.text}
        for d in itertools.islice(read_beir_corpus(args.dataset / "corpus.jsonl"), args.docs)
    ]
    queries = list(read_beir_queries(args.dataset / "queries.jsonl").values())[: args.queries]
    receiver = Receiver()
    envs = {
        "on": {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_TRACES_SAMPLER": "always_on",
            "RAG_METRICS": "true",
        },
        "off": {"OTEL_SDK_DISABLED": "true", "RAG_METRICS": "false"},
    }
    p50s: dict[str, list[float]] = {"on": [], "off": []}
    p95s: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory(prefix="telemetry-bench-") as tmp:
        servers = {name: Server(Path(tmp) / name, env=env) for name, env in envs.items()}
        try:
            for name, server in servers.items():
                server.start(timeout=180)
                t0 = time.perf_counter()
                ingest(server.url, docs)
                print(f"{name}: {len(docs)} docs ingested in {time.perf_counter() - t0:.0f} s")
                asyncio.run(run_queries(server.url, queries[:30]))  # warm up
            for run in range(args.runs):
                order = ["on", "off"] if run % 2 == 0 else ["off", "on"]
                for name in order:
                    latencies = asyncio.run(run_queries(servers[name].url, queries))
                    p50s[name].append(percentile(latencies, 50))
                    p95s[name].append(percentile(latencies, 95))
                print(
                    f"run {run + 1}: p50 on {p50s['on'][-1]:.2f} ms, off {p50s['off'][-1]:.2f} ms"
                )
        finally:
            for server in servers.values():
                server.stop()
            drop_keys(PREFIXES)
    result = {
        "docs": len(docs),
        "queries_per_run": len(queries),
        "runs": args.runs,
        "p50_ms": {k: round(statistics.median(v), 2) for k, v in p50s.items()},
        "p95_ms": {k: round(statistics.median(v), 2) for k, v in p95s.items()},
        "p50_runs_ms": {k: [round(x, 2) for x in v] for k, v in p50s.items()},
        "spans_exported": receiver.spans(),
        "export_requests": len(receiver.bodies),
    }
    on, off = result["p50_ms"]["on"], result["p50_ms"]["off"]  # type: ignore[index]
    result["p50_overhead_pct"] = round((on - off) / off * 100, 1)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    receiver.server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
