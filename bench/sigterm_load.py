"""SIGTERM under load: does a graceful shutdown drop requests?

Starts an OpenAI-wire embeddings server answering after --embed-ms (so searches are in
flight when the signal lands) and `rag-pipeline serve` with RAG_EMBEDDER=openai, then sends
searches at --rate a second (open loop, one connection each) for --seconds and SIGTERMs the
server halfway. Each request ends as: answered (any HTTP status), refused (the connection
was not accepted: the listener had closed) or dropped (accepted, no answer). Reported per
run, with the exit code.

    python bench/sigterm_load.py [--runs 5] [--rate 50] [--seconds 4] [--embed-ms 300]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import DOCS  # noqa: E402
from tests.e2e.load import in_flight_at, searches_through_sigterm  # noqa: E402
from tests.e2e.server import PREFIXES, Server, drop_keys  # noqa: E402
from tests.openai_wire import FakeEmbeddings, Reply  # noqa: E402


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    with FakeEmbeddings(dim=256) as fake, tempfile.TemporaryDirectory() as tmp:
        env = {
            "RAG_EMBEDDER": "openai",
            "OPENAI_BASE_URL": fake.url,
            "OPENAI_API_KEY": "test-key",
            "RAG_EMBEDDING_MODEL": "bench-model",
            "RAG_EMBEDDING_DIMENSIONS": "256",
        }
        server = Server(Path(tmp) / "data", env).start()
        proc = server.proc
        assert proc is not None
        try:
            with server.client() as http:
                assert http.post("/api/v1/ingest?wait=true", json={"documents": DOCS}).is_success
            fake.outage = Reply(delay=args.embed_ms / 1000)
            outcomes, sig = searches_through_sigterm(
                proc, server.port, rate=args.rate, seconds=args.seconds, sigterm_at=args.seconds / 2
            )
            code = proc.wait(60)
            server.proc = None
        finally:
            server.stop()
            drop_keys(PREFIXES)
    kinds = collections.Counter("answered" if o.status is not None else o.kind for o in outcomes)
    statuses = collections.Counter(o.status for o in outcomes if o.status is not None)
    in_flight = len(in_flight_at(outcomes, sig))
    return {
        "sent": len(outcomes),
        "answered": kinds["answered"],
        "refused": kinds["refused"],
        "dropped": kinds["dropped"],
        "statuses": dict(statuses),
        "in_flight_at_sigterm": in_flight,
        "dropped_connected_before_sigterm": sum(
            1 for o in outcomes if o.kind == "dropped" and o.connected and o.connected < sig
        ),
        "exit_code": code,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--embed-ms", type=float, default=300.0)
    args = parser.parse_args()
    totals: collections.Counter[str] = collections.Counter()
    for n in range(args.runs):
        result = one_run(args)
        print(f"run {n + 1}: {result}", flush=True)
        for key in ("sent", "answered", "refused", "dropped", "in_flight_at_sigterm"):
            totals[key] += result[key]
    print("totals:", dict(totals))


if __name__ == "__main__":
    main()
