"""What tracing and metrics add to search latency: p50 with both on versus both off.

Starts two `rag-pipeline serve` processes over the same few hundred SciFact documents (each
its own data directory, ingested once):

- on:  every span sampled (OTEL_TRACES_SAMPLER=always_on) and exported over OTLP/HTTP
       (http/protobuf, batch processor) to a receiver this script runs on a free port, which
       answers 200 and keeps the bodies (decoded only after timing, to count the spans);
       metrics on (RAG_METRICS=true);
- off: OTEL_SDK_DISABLED=true and RAG_METRICS=false.

The machine is shared and noisy, so on and off are interleaved query by query: each query goes
to both servers, one after the other, the order alternating (on first for even queries, off
first for odd ones), so both see the same background load. Each run sends --queries SciFact
queries this way; per run the p50 of each server and the median of the paired differences
(on - off for the same query) are taken, then the medians over --runs runs.

    python bench/telemetry_overhead.py [--docs 300] [--queries 200] [--runs 7] [--out FILE]
        [--work-dir DIR]   # keep the two data directories: a second run skips the ingest
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
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

from app.cli.corpus import read_beir_corpus, read_beir_queries  # noqa: E402
from tests.conftest import SCIFACT  # noqa: E402
from tests.e2e.server import PREFIXES, Server, drop_keys  # noqa: E402

DATASET = SCIFACT


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def run_queries(urls: dict[str, str], queries: list[str]) -> dict[str, list[float]]:
    """Every query to every server, in an order that alternates query by query."""
    latencies: dict[str, list[float]] = {name: [] for name in urls}
    clients = {name: httpx.AsyncClient(base_url=url, timeout=30) for name, url in urls.items()}
    try:
        names = list(urls)
        for i, q in enumerate(queries):
            for name in names if i % 2 == 0 else names[::-1]:
                t0 = time.perf_counter()
                r = await clients[name].post("/api/v1/search", json={"query": q})
                latencies[name].append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
    finally:
        for client in clients.values():
            await client.aclose()
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
    parser.add_argument("--work-dir", type=Path, default=None, help="keep data directories here")
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
    paired: list[float] = []
    with tempfile.TemporaryDirectory(prefix="telemetry-bench-") as tmp:
        base = args.work_dir or Path(tmp)
        servers = {name: Server(base / name, env=env) for name, env in envs.items()}
        urls = {name: server.url for name, server in servers.items()}
        try:
            for name, server in servers.items():
                server.start(timeout=180)
                t0 = time.perf_counter()
                ingest(server.url, docs)
                print(f"{name}: {len(docs)} docs ingested in {time.perf_counter() - t0:.0f} s")
            asyncio.run(run_queries(urls, queries[:30]))  # warm up
            pids = {name: server.pid for name, server in servers.items()}
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items() if pid}
            for run in range(args.runs):
                latencies = asyncio.run(run_queries(urls, queries))
                for name, values in latencies.items():
                    p50s[name].append(percentile(values, 50))
                    p95s[name].append(percentile(values, 95))
                diffs = [a - b for a, b in zip(latencies["on"], latencies["off"], strict=True)]
                paired.append(statistics.median(diffs))
                print(
                    f"run {run + 1}: p50 on {p50s['on'][-1]:.2f} ms, off {p50s['off'][-1]:.2f} "
                    f"ms, median paired difference {paired[-1]:+.2f} ms"
                )
            # Server CPU per search: far less sensitive to the other load on the machine than
            # wall time (the export thread's encoding counts here too).
            searches = args.runs * len(queries)
            cpu_ms = {
                name: round((cpu_seconds(pid) - cpu_before[name]) / searches * 1000, 3)
                for name, pid in pids.items()
                if pid
            }
        finally:
            for server in servers.values():
                server.stop()
            if args.work_dir is None:
                drop_keys(PREFIXES)
    result = {
        "docs": len(docs),
        "queries_per_run": len(queries),
        "runs": args.runs,
        "p50_ms": {k: round(statistics.median(v), 2) for k, v in p50s.items()},
        "p95_ms": {k: round(statistics.median(v), 2) for k, v in p95s.items()},
        "p50_runs_ms": {k: [round(x, 2) for x in v] for k, v in p50s.items()},
        "paired_difference_ms": round(statistics.median(paired), 3),
        "paired_runs_ms": [round(x, 3) for x in paired],
        "server_cpu_ms_per_search": cpu_ms,
        "spans_exported": receiver.spans(),
        "export_requests": len(receiver.bodies),
    }
    on, off = result["p50_ms"]["on"], result["p50_ms"]["off"]  # type: ignore[index]
    result["p50_overhead_pct"] = round((on - off) / off * 100, 1)
    result["paired_overhead_pct_of_off_p50"] = round(
        float(result["paired_difference_ms"]) / off * 100,
        1,  # type: ignore[arg-type]
    )
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    receiver.server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
