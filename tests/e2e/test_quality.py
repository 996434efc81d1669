"""GET /api/v1/quality and /api/v1/stats through a real server of their own, so the counts
are exactly what this module did."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import DOCS
from tests.e2e.server import Server


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    srv = Server(tmp_path_factory.mktemp("quality") / "data").start()
    try:
        with srv.client() as client:
            response = client.post("/api/v1/ingest?wait=true", json={"documents": DOCS})
            assert response.status_code == 200, response.text
            yield client
    finally:
        srv.stop()


def recorded(http: httpx.Client, n: int, timeout: float = 10.0) -> dict:
    """Recording is off the response path: wait until `n` retrievals are in the stream."""
    deadline = time.monotonic() + timeout
    while True:
        stats = http.get("/api/v1/stats").json()
        if stats["recorder"]["appended"] >= n or time.monotonic() > deadline:
            assert stats["recorder"]["appended"] == n, stats
            return stats
        time.sleep(0.05)


def test_quality_and_stats_from_the_streams(quiet: httpx.Client) -> None:
    http = quiet
    empty = http.get("/api/v1/quality", params={"hours": 2}).json()
    assert empty["retrievals"] == 0 and empty["zero_result_rate"] is None
    assert len(empty["per_hour"]) in (2, 3)  # every hour the window touches

    searches = [
        {"query": "glucose hormone pancreas", "top_k": 3},
        {"query": "volcano lava magma", "top_k": 3},
        {"query": "reliable byte stream delivery", "top_k": 3},
        {"query": "glucose hormone pancreas", "top_k": 3, "min_score": 1.0},  # nothing passes
    ]
    bodies = [http.post("/api/v1/search", json=s).json() for s in searches]
    assert [len(b["results"]) for b in bodies] == [3, 3, 3, 0]
    # Judge: search 0 relevant at rank 1 (by document); search 1 relevant at rank 2 (by
    # chunk), rank 1 judged not relevant; searches 2 and 3 are not judged.
    first, second = bodies[0]["results"], bodies[1]["results"]
    judgements = [
        {"retrieval_id": bodies[0]["retrieval_id"], "doc_id": first[0]["doc_id"], "relevance": 2},
        {"retrieval_id": bodies[1]["retrieval_id"], "doc_id": second[0]["doc_id"], "relevance": 0},
        {
            "retrieval_id": bodies[1]["retrieval_id"],
            "chunk_id": second[1]["chunk_id"],
            "relevance": 1,
        },
    ]
    recorded(http, 4)
    for body in judgements:
        assert http.post("/api/v1/feedback", json=body).status_code == 201

    report = http.get("/api/v1/quality", params={"hours": 1, "k": 2}).json()
    assert report["retrievals"] == 4
    assert report["zero_results"] == 1 and report["zero_result_rate"] == 0.25
    assert sum(h["retrievals"] for h in report["per_hour"]) == 4
    assert sum(h["zero_results"] for h in report["per_hour"]) == 1
    totals = sorted(b["timings_ms"]["total"] for b in bodies)
    latency = report["latency_ms"]["total"]
    # nearest rank over 4 values: p50 is the 2nd, p95 and p99 the 4th
    assert (latency["count"], latency["p50"], latency["p99"]) == (4, totals[1], totals[3])
    assert latency["p95"] == totals[3]
    assert {"embed", "search"} <= set(report["latency_ms"])
    fq = report["feedback"]
    assert (fq["k"], fq["judged_retrievals"], fq["judgements"]) == (2, 2, 3)
    # P@2: search 0 has doc-relevant rank 1 (rank 2 too if it is the same document);
    # search 1 has rank 2 relevant. MRR: (1 + 1/2) / 2.
    same_doc = int(first[1]["doc_id"] == first[0]["doc_id"])
    assert fq["precision_at_k"] == pytest.approx(((1 + same_doc) / 2 + 1 / 2) / 2)
    assert fq["mrr"] == pytest.approx(0.75)
    assert report["truncated"] is False

    stats = http.get("/api/v1/stats").json()
    events = stats["events"]
    assert events["documents_stream"] == len(DOCS)
    assert (events["retrievals_stream"], events["feedback_stream"]) == (4, 3)
    assert events["dead_letters"] == 0 and events["indexer_pending"] == 0
    assert events["indexer_lag"] == 0 and events["indexer_consumers"] == 1
    assert stats["recorder"] == {"appended": 4, "buffered": 0, "dropped": 0}
    assert stats["index"]["documents"] == len(DOCS)
    cache = stats["cache"]
    lookups = cache["hits"] + cache["misses"]
    assert lookups > 0 and cache["hit_rate"] == pytest.approx(cache["hits"] / lookups)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"hours": "0"}, "hours"),
        ({"hours": "169"}, "hours"),
        ({"hours": "soon"}, "hours"),
        ({"k": "0"}, "k"),
        ({"k": "101"}, "k"),
        ({"since": "1"}, "since"),
    ],
)
def test_bad_quality_parameters_name_the_field(
    quiet: httpx.Client, params: dict[str, str], field: str
) -> None:
    response = quiet.get("/api/v1/quality", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


def test_quality_is_in_the_openapi_spec(quiet: httpx.Client) -> None:
    op = quiet.get("/openapi.json").json()["paths"]["/api/v1/quality"]["get"]
    assert {p["name"] for p in op["parameters"]} == {"hours", "k"}
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/QualityReport"
    )


def test_recording_can_be_turned_off(tmp_path: Path) -> None:
    srv = Server(tmp_path / "data", env={"RAG_RECORD_RETRIEVALS": "false"}).start()
    try:
        with srv.client() as http:
            rid = http.post("/api/v1/search", json={"query": "anything"}).json()["retrieval_id"]
            time.sleep(0.3)  # would be long enough for the recorder to flush
            stats = http.get("/api/v1/stats").json()
            assert stats["recorder"] == {"appended": 0, "buffered": 0, "dropped": 0}
            assert stats["events"]["retrievals_stream"] == 0
            assert http.get(f"/api/v1/retrievals/{rid}").status_code == 404
            assert http.get("/api/v1/quality").json()["retrievals"] == 0
    finally:
        srv.stop()
