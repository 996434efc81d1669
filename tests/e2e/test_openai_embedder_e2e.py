"""`serve` with RAG_EMBEDDER=openai against an OpenAI-wire server: ingest and search work;
while the API answers 429 searches fail fast with 503 + Retry-After and documents ingested
meanwhile are indexed after recovery, none dead-lettered; a SIGTERM under load drops
nothing and the retrieval events of the last searches are flushed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import DOCS
from tests.e2e.load import in_flight_at, searches_through_sigterm
from tests.e2e.server import Server
from tests.openai_wire import FakeEmbeddings, Reply

DIM = 64


def openai_env(fake: FakeEmbeddings) -> dict[str, str]:
    return {
        "RAG_EMBEDDER": "openai",
        "OPENAI_BASE_URL": fake.url,
        "OPENAI_API_KEY": "test-key",
        "RAG_EMBEDDING_MODEL": "fake-wire-model",
        "RAG_EMBEDDING_DIMENSIONS": str(DIM),
        "RAG_EMBEDDER_TIMEOUT_SECONDS": "2",
        "RAG_EMBEDDER_BREAKER_FAILURES": "3",
        "RAG_EMBEDDER_BREAKER_COOLDOWN_SECONDS": "1",
    }


@pytest.fixture()
def fake() -> Iterator[FakeEmbeddings]:
    with FakeEmbeddings(dim=DIM) as server:
        yield server


def wait_indexed(http: httpx.Client, ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        statuses = {i: http.get(f"/api/v1/documents/{i}").json()["status"] for i in ids}
        if all(s == "indexed" for s in statuses.values()):
            break
        time.sleep(0.2)
    return statuses


def test_ingest_search_outage_and_recovery(fake: FakeEmbeddings, data_dir: Path) -> None:
    server = Server(data_dir, openai_env(fake)).start()
    try:
        with server.client() as http:
            ingested = http.post("/api/v1/ingest?wait=true", json={"documents": DOCS})
            assert ingested.status_code == 200, ingested.text
            assert {d["status"] for d in ingested.json()["documents"]} == {"indexed"}
            assert http.get("/api/v1/stats").json()["index"] == {
                **http.get("/api/v1/stats").json()["index"],
                "model_id": "openai-fake-wire-model-64",
                "dim": DIM,
            }

            found = http.post(
                "/api/v1/search", json={"query": "lava from a volcano", "rerank": True}
            )
            assert found.status_code == 200, found.text
            body = found.json()
            assert body["results"][0]["doc_id"] == "volcano"
            assert body["reranked"] is False
            assert "no token vectors" in body["rerank_skipped"]
            plain = http.post("/api/v1/search", json={"query": "lava"}).json()
            assert "rerank_skipped" not in plain  # not asked for, nothing to say

            # The API rate-limits everything: searches fail with 503 until the breaker
            # opens, then fail without calling it at all.
            fake.outage = Reply(status=429, retry_after=1)
            for _ in range(3):
                failed = http.post("/api/v1/search", json={"query": "volcano"})
                assert failed.status_code == 503
                assert int(failed.headers["retry-after"]) >= 1
            sent = fake.requests_count()
            for _ in range(20):
                failed = http.post("/api/v1/search", json={"query": "volcano"})
                assert failed.status_code == 503, failed.text
                assert int(failed.headers["retry-after"]) >= 1
                assert failed.json()["error"]["code"] == "unavailable"
            # At most a probe a cool-down (1 s) went out, and the projector's probes.
            assert fake.requests_count() - sent <= 3

            # Documents accepted during the outage wait; none is failed or dead-lettered.
            fresh = [
                {"id": f"outage-{i}", "title": f"Outage {i}", "text": f"written in outage {i}"}
                for i in range(5)
            ]
            accepted = http.post("/api/v1/ingest", json={"documents": fresh})
            assert accepted.status_code == 202, accepted.text
            time.sleep(4)  # several cool-downs and failed probes
            stats = http.get("/api/v1/stats").json()["events"]
            assert stats["dead_letters"] == 0
            statuses = {d["id"]: http.get(f"/api/v1/documents/{d['id']}").json() for d in fresh}
            assert {s["status"] for s in statuses.values()} == {"pending"}

            fake.outage = None
            recovered_at = time.monotonic()
            statuses_now = wait_indexed(http, [d["id"] for d in fresh], timeout=30)
            assert set(statuses_now.values()) == {"indexed"}, statuses_now
            took = time.monotonic() - recovered_at
            assert took < 30
            assert http.get("/api/v1/stats").json()["events"]["dead_letters"] == 0
            again = http.post("/api/v1/search", json={"query": "written in outage 3"})
            assert again.status_code == 200
            assert again.json()["results"][0]["doc_id"] == "outage-3"
    finally:
        assert server.stop() == 0


def test_sigterm_under_load_drops_no_request(fake: FakeEmbeddings, data_dir: Path) -> None:
    server = Server(data_dir, openai_env(fake)).start()
    proc = server.proc
    assert proc is not None
    try:
        with server.client() as http:
            assert http.post("/api/v1/ingest?wait=true", json={"documents": DOCS}).is_success
        # Every search spends 0.3 s at the embeddings API: requests are in flight at SIGTERM.
        fake.outage = Reply(delay=0.3)
        outcomes, signalled = searches_through_sigterm(
            proc, server.port, rate=50, seconds=2, sigterm_at=1.0
        )
        assert proc.wait(30) == 0
        server.proc = None

        accepted = [o for o in outcomes if o.connected is not None]
        # Every request connected before SIGTERM was answered, in flight at the signal or not.
        before = [o for o in accepted if o.connected is not None and o.connected < signalled]
        assert [o for o in before if o.status != 200] == []
        # After it, a request is answered or refused (not accepted), never dropped: new
        # connections are refused at the kernel before the listening socket closes, so none
        # is reset in its accept queue (app/api/listener.py).
        assert {o.kind for o in outcomes} <= {"200", "refused"}, [
            (o.kind, o.error) for o in outcomes if o.kind not in ("200", "refused")
        ]
        assert len(accepted) >= 50  # the first second's requests, at least
        assert in_flight_at(accepted, signalled)  # the test means something only if some were
        assert any(o.connected is None and o.started > signalled for o in outcomes)

        # The recorder flushed on the way out: the last answered search is on record.
        last = max(accepted, key=lambda o: o.started)
        retrieval_id = json.loads(last.body)["retrieval_id"]
        fake.outage = None
        server = Server(data_dir, openai_env(fake)).start()
        with server.client() as http:
            recorded = http.get(f"/api/v1/retrievals/{retrieval_id}")
            assert recorded.status_code == 200, recorded.text
    finally:
        server.stop()
