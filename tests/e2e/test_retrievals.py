"""Retrieval events and feedback through a real server: recorded, read back, judged."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path

import httpx

from app.services.recorder import new_retrieval_id, retrieval_time_ms
from tests.e2e.server import Server


def read_back(http: httpx.Client, retrieval_id: str, timeout: float = 10.0) -> dict:
    """Recording is off the response path, so the event may land a moment after the answer."""
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(f"/api/v1/retrievals/{retrieval_id}")
        if response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            return response.json()
        time.sleep(0.1)


def test_retrieval_ids_are_uuid7_with_their_time() -> None:
    before = time.time_ns() // 1_000_000
    rid = new_retrieval_id()
    assert uuid.UUID(rid).version == 7
    at = retrieval_time_ms(rid)
    assert at is not None and before <= at <= time.time_ns() // 1_000_000
    assert retrieval_time_ms(str(uuid.uuid4())) is None
    assert retrieval_time_ms("not-a-uuid") is None


def test_every_search_is_recorded_and_can_be_read_back(http: httpx.Client) -> None:
    body = http.post("/api/v1/search", json={"query": "glucose hormone", "top_k": 3}).json()
    event = read_back(http, body["retrieval_id"])
    assert event["type"] == "RetrievalRecorded" and event["schema"] == 1
    assert event["retrieval_id"] == body["retrieval_id"]
    assert event["query"] == "glucose hormone" and event["query_sha256"] is None
    assert event["params"]["top_k"] == 3 and event["params"]["mode"] == "hybrid"
    assert [r["chunk_id"] for r in event["results"]] == [r["chunk_id"] for r in body["results"]]
    # the response rounds to 6 places; the event keeps full precision
    assert round(event["results"][0]["scores"]["dense"], 6) == body["results"][0]["scores"]["dense"]
    assert set(event["timings_ms"]) >= {"embed", "search", "total"}


def test_unknown_retrieval_is_404(http: httpx.Client) -> None:
    assert http.get(f"/api/v1/retrievals/{new_retrieval_id()}").status_code == 404
    assert http.get("/api/v1/retrievals/nonsense").status_code == 404


def test_feedback_on_a_recorded_retrieval(http: httpx.Client) -> None:
    body = http.post("/api/v1/search", json={"query": "volcano lava"}).json()
    read_back(http, body["retrieval_id"])
    top = body["results"][0]
    by_doc = http.post(
        "/api/v1/feedback",
        json={"retrieval_id": body["retrieval_id"], "doc_id": top["doc_id"], "relevance": 2},
    )
    assert by_doc.status_code == 201, by_doc.text
    assert by_doc.json()["retrieval_id"] == body["retrieval_id"]
    assert by_doc.json()["event_id"].count("-") == 1
    by_chunk = http.post(
        "/api/v1/feedback",
        json={"retrieval_id": body["retrieval_id"], "chunk_id": top["chunk_id"], "relevance": 0},
    )
    assert by_chunk.status_code == 201


def test_bad_feedback(http: httpx.Client) -> None:
    rid = http.post("/api/v1/search", json={"query": "tcp"}).json()["retrieval_id"]
    read_back(http, rid)
    cases = [
        ({"retrieval_id": rid, "relevance": 1}, 422, "doc_id"),
        ({"retrieval_id": rid, "doc_id": "a", "chunk_id": "b", "relevance": 1}, 422, "doc_id"),
        ({"retrieval_id": rid, "doc_id": "a", "relevance": 5}, 422, "relevance"),
        ({"retrieval_id": rid, "doc_id": "a"}, 422, "relevance"),
        ({"retrieval_id": rid, "doc_id": "a", "relevance": 1, "extra": 1}, 422, "extra"),
        ({"retrieval_id": new_retrieval_id(), "doc_id": "a", "relevance": 1}, 404, None),
    ]
    for body, status, field in cases:
        response = http.post("/api/v1/feedback", json=body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"].get("field") == field


def test_redacted_queries_survive_an_immediate_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = Server(data, env={"RAG_EVENT_REDACT_QUERIES": "true"}).start()
    try:
        rid = httpx.post(
            f"{server.url}/api/v1/search", json={"query": "secret question"}, timeout=60
        ).json()["retrieval_id"]
    finally:
        assert server.stop() == 0  # at once: whatever is still buffered must be flushed now
    again = Server(data, env={"RAG_EVENT_REDACT_QUERIES": "true"}).start()
    try:
        with again.client() as http:
            event = read_back(http, rid)
        assert event["query"] is None
        assert event["query_sha256"] == hashlib.sha256(b"secret question").hexdigest()
    finally:
        again.stop()
