"""Search, ingest and document endpoints through a real Hypercorn server."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import DOCS


def search(http: httpx.Client, **body: object) -> dict:
    response = http.post("/api/v1/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_every_mode_finds_the_matching_document(http: httpx.Client, mode: str) -> None:
    body = search(http, query="how do plants turn sunlight into glucose", mode=mode, rerank=False)
    assert body["mode"] == mode
    assert body["results"][0]["doc_id"] == "photosynthesis"
    first = body["results"][0]
    assert set(first) >= {"doc_id", "chunk_id", "score", "title", "text", "metadata", "scores"}
    assert first["title"] == "Photosynthesis"
    assert first["metadata"]["topic"] == "biology"
    assert {"dense", "bm25", "fusion"} <= set(first["scores"])
    assert body["retrieval_id"]
    assert {"embed", "search", "fusion", "total"} <= set(body["timings_ms"])


def test_bm25_mode_returns_only_term_matches(http: httpx.Client) -> None:
    body = search(http, query="pancreatic beta cells", mode="bm25", rerank=False)
    assert [r["doc_id"] for r in body["results"]] == ["insulin"]
    assert body["results"][0]["scores"]["bm25"] > 0


def test_rerank_on_request_reports_the_stage(http: httpx.Client) -> None:
    body = search(http, query="reliable ordered byte stream delivery", rerank=True)
    assert body["reranked"] is True
    assert body["results"][0]["doc_id"] == "tcp"
    assert 0.0 < body["results"][0]["scores"]["rerank"] <= 1.0
    assert "rerank" in body["timings_ms"]
    plain = search(http, query="reliable ordered byte stream delivery")  # RAG_RERANK=false
    assert plain["reranked"] is False
    assert "rerank" not in plain["results"][0]["scores"]


def test_scores_are_ordered_and_bounded(http: httpx.Client) -> None:
    body = search(http, query="hormone that regulates blood glucose", top_k=5)
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert len(body["results"]) <= 5


def test_same_query_same_ranking(http: httpx.Client) -> None:
    rankings = {
        tuple(r["chunk_id"] for r in search(http, query="science", top_k=10)["results"])
        for _ in range(5)
    }
    assert len(rankings) == 1


def test_markdown_sections_are_kept(http: httpx.Client) -> None:
    body = search(http, query="package manager enable at boot", top_k=3)
    top = body["results"][0]
    assert top["doc_id"] == "guide.md"
    assert top["section"] == ["Install", "Linux"]
    assert "#" not in top["text"]


def test_filter_exact_match(http: httpx.Client) -> None:
    body = search(http, query="glucose", filters={"topic": "biology"}, top_k=10)
    assert {r["doc_id"] for r in body["results"]} == {"photosynthesis", "insulin"}


def test_filter_any_of(http: httpx.Client) -> None:
    body = search(http, query="anything", filters={"tags": {"any": ["internet", "plants"]}})
    assert {r["doc_id"] for r in body["results"]} == {"tcp", "photosynthesis"}


def test_filter_numeric_range(http: httpx.Client) -> None:
    body = search(http, query="anything", filters={"year": {"gte": 2010, "lt": 2020}})
    assert {r["doc_id"] for r in body["results"]} == {"photosynthesis", "tcp"}


def test_filter_with_no_match_gives_no_results(http: httpx.Client) -> None:
    assert search(http, query="volcano", filters={"topic": "astronomy"})["results"] == []


def test_min_score_is_a_cosine_floor(http: httpx.Client) -> None:
    # Only this module's documents (other tests add their own to the shared server).
    mine = {"topic": {"any": sorted({d["metadata"]["topic"] for d in DOCS})}}
    loose = search(http, query="volcanic eruption of magma", min_score=-1, top_k=10, filters=mine)[
        "results"
    ]
    assert len(loose) == len(DOCS) + 2  # the guide has three chunks
    strict = search(
        http, query="volcanic eruption of magma", min_score=0.4, top_k=10, filters=mine
    )["results"]
    assert [r["doc_id"] for r in strict] == ["volcano"]
    assert all(r["scores"]["dense"] >= 0.4 for r in strict)


def test_diversity_changes_the_selection(http: httpx.Client) -> None:
    plain = search(http, query="biology glucose", top_k=3, rerank=False)["results"]
    diverse = search(http, query="biology glucose", top_k=3, rerank=False, diversity=0.9)["results"]
    assert plain[0]["doc_id"] == diverse[0]["doc_id"]
    assert [r["chunk_id"] for r in plain] != [r["chunk_id"] for r in diverse]
    assert [r["scores"]["mmr"] for r in diverse] == [0.0, 1.0, 2.0]


def test_reingesting_unchanged_text_is_a_no_op(http: httpx.Client) -> None:
    response = http.post("/api/v1/ingest", json={"documents": [DOCS[0]]})
    assert response.status_code == 200
    assert response.json()["documents"][0]["status"] == "unchanged"


def test_update_replaces_old_chunks_and_delete_removes(http: httpx.Client) -> None:
    doc = {
        "id": "temp",
        "title": "Savanna",
        "text": "Herds of zebras graze together on the open grass plains every morning.\n\n"
        "Tall giraffes browse leaves from the acacia trees near the river bank.",
    }
    response = http.post(
        "/api/v1/ingest?wait=true",
        json={"documents": [doc], "chunk_size": 24, "chunk_overlap": 0},
    )
    assert response.status_code == 200, response.text
    first = response.json()["documents"][0]
    assert first["status"] == "indexed" and first["chunks"] == 2
    status = http.get("/api/v1/documents/temp").json()
    assert status.pop("accepted_at") > 0
    assert status == {
        "doc_id": "temp",
        "status": "indexed",
        "version": first["version"],
        "chunks": 2,
        "event_id": first["event_id"],
        "title": "Savanna",
        "metadata": {},
    }

    doc["text"] = "Only zebras now."
    second = http.post("/api/v1/ingest?wait=true", json={"documents": [doc]}).json()
    second = second["documents"][0]
    assert second["version"] != first["version"] and second["chunks"] == 1
    assert http.get("/api/v1/documents/temp").json()["chunks"] == 1
    hits = search(http, query="giraffes", mode="bm25")["results"]
    assert all(r["doc_id"] != "temp" for r in hits)

    deleted = http.delete("/api/v1/documents/temp", params={"wait": "true"})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["status"] == "deleted"
    assert http.get("/api/v1/documents/temp").json()["status"] == "deleted"
    assert all(r["doc_id"] != "temp" for r in search(http, query="zebras", top_k=20)["results"])
    assert http.delete("/api/v1/documents/temp").status_code == 404


def test_stats_count_documents_and_chunks(http: httpx.Client) -> None:
    body = http.get("/api/v1/stats").json()
    assert body["index"]["documents"] >= len(DOCS)
    assert body["index"]["chunks"] >= body["index"]["documents"]
    assert body["index"]["dim"] == 384
    events = body["events"]
    assert events["documents_stream"] >= len(DOCS)
    assert events["dead_letters"] == 0
    assert set(body["cache"]) == {"hits", "misses", "writes", "errors", "hit_rate"}


def test_health_ready_and_openapi(http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    assert http.get("/ready").json()["ready"] is True
    spec = http.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert {
        "/api/v1/search",
        "/api/v1/ingest",
        "/api/v1/documents/{doc_id}",
        "/api/v1/stats",
        "/health",
        "/ready",
    } <= set(spec["paths"])
    search_schema = spec["components"]["schemas"]["SearchRequest"]
    assert search_schema["required"] == ["query"]
    assert search_schema["properties"]["top_k"]["anyOf"][0]["maximum"] == 100
