"""Dependencies failing under a real server: Redis stopped during search and ingest, and the
memory budget. (The embeddings API failing: test_openai_embedder_e2e.py.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.adapters.redis.embedded import EmbeddedRedis
from tests.e2e.conftest import DOCS
from tests.e2e.server import Server
from tests.e2e.test_openai_embedder_e2e import openai_env
from tests.openai_wire import FakeEmbeddings


@pytest.fixture()
def fake() -> Iterator[FakeEmbeddings]:
    with FakeEmbeddings(dim=64) as server:
        yield server


def test_redis_down_search_answers_ingest_refuses_nothing_lost(
    fake: FakeEmbeddings, tmp_path: Path
) -> None:
    valkey = EmbeddedRedis(tmp_path / "valkey")
    url = valkey.start()
    server = Server(
        tmp_path / "data", {**openai_env(fake), "REDIS_URL": url, "RAG_STREAM_PREFIX": "rag:"}
    ).start()
    try:
        with server.client() as http:
            assert http.post("/api/v1/ingest?wait=true", json={"documents": DOCS}).is_success

            valkey.stop()
            # Search needs only the embedder and the index: it answers, and its retrieval
            # event waits in the recorder's buffer.
            found = http.post("/api/v1/search", json={"query": "volcano lava"})
            assert found.status_code == 200, found.text
            retrieval_id = found.json()["retrieval_id"]
            ready = http.get("/ready")
            assert ready.status_code == 503 and ready.json()["checks"]["event_log"] is False
            # Ingest cannot append its event: 503 with Retry-After, nothing acknowledged.
            refused = http.post(
                "/api/v1/ingest", json={"documents": [{"id": "lost?", "text": "never acked"}]}
            )
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["retry-after"]) >= 1

            assert valkey.start() == url  # same URL: the server reconnects by itself
            # The buffered event reaches the stream without another search to push it.
            retrievals = {}
            for _ in range(50):
                stats = http.get("/api/v1/stats")
                if stats.status_code == 200:
                    retrievals = stats.json()["recorder"]
                    if retrievals["buffered"] == 0:
                        break
                time.sleep(0.2)
            assert retrievals == {"appended": 1, "buffered": 0, "dropped": 0}
            recorded = http.get(f"/api/v1/retrievals/{retrieval_id}")
            assert recorded.status_code == 200, recorded.text
            assert http.get("/api/v1/documents/lost%3F").status_code == 404  # never accepted
            assert http.get("/ready").status_code == 200
    finally:
        server.stop()
        valkey.stop()


def test_over_the_memory_budget_requests_get_503_and_probes_answer(
    fake: FakeEmbeddings, data_dir: Path
) -> None:
    # Below what the process takes at rest: every request is over the budget.
    server = Server(data_dir, {**openai_env(fake), "RAG_MAX_MEMORY_MB": "16"}).start()
    try:
        with server.client() as http:
            refused = http.post("/api/v1/search", json={"query": "volcano"})
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "over_memory_budget"
            assert http.get("/health").status_code == 200
            assert http.get("/ready").status_code == 200
            assert fake.requests_count() == 0  # refused before any work
    finally:
        server.stop()
