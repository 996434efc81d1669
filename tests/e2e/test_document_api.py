"""The document API and batch search through a real server: a document read back with its text
and chunks, a tenant's documents listed by cursor and status, an id twice in one ingest
(the last one wins), boolean filters, and batch search answering as single searches do."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.conftest import DOCS
from tests.e2e.server import Server


def listed(http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    """Every document the pages give, following `next`."""
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = http.get("/api/v1/documents", params=query)
        assert page.status_code == 200, page.text
        out += page.json()["documents"]
        cursor = page.json()["next"]
        if cursor is None:
            return out


def test_a_document_reads_back_with_its_text_and_chunks(http: httpx.Client) -> None:
    guide = next(d for d in DOCS if d["id"] == "guide.md")
    plain = http.get("/api/v1/documents/guide.md")
    assert plain.status_code == 200, plain.text
    body = plain.json()
    assert (body["status"], body["title"], body["metadata"]) == (
        "indexed",
        guide["title"],
        guide["metadata"],
    )
    assert body["chunks"] == 3 and body["accepted_at"] > 0
    assert "text" not in body and "chunks_indexed" not in body

    full = http.get("/api/v1/documents/guide.md", params={"include": "text,chunks"}).json()
    assert full["text"] == guide["text"]
    chunks = full["chunks_indexed"]
    assert [c["chunk_index"] for c in chunks] == [0, 1, 2]
    assert [c["section"] for c in chunks] == [["Install"], ["Install", "Linux"], ["Backup"]]
    assert {c["version"] for c in chunks} == {full["version"]}
    assert {c["event_id"] for c in chunks} == {full["event_id"]}
    assert chunks[2]["text"].startswith("Snapshots of the data directory")
    assert chunks[1]["embed_text"].startswith("Operations guide\n")
    # The chunks are the ones search returns.
    hits = http.post(
        "/api/v1/search", json={"query": "nightly snapshots of the data directory", "top_k": 1}
    ).json()["results"]
    assert hits[0]["chunk_id"] == chunks[2]["chunk_id"]

    only_chunks = http.get("/api/v1/documents/guide.md", params={"include": "chunks"}).json()
    assert "text" not in only_chunks and len(only_chunks["chunks_indexed"]) == 3
    only_text = http.get("/api/v1/documents/guide.md", params={"include": "text"}).json()
    assert "chunks_indexed" not in only_text and only_text["text"] == guide["text"]

    missing = http.get("/api/v1/documents/never-there", params={"include": "text"})
    assert missing.status_code == 404
    for bad in ("vectors", "text,", ""):
        refused = http.get("/api/v1/documents/guide.md", params={"include": bad})
        assert refused.status_code == 422, bad
        assert refused.json()["error"]["field"] == "include"


def test_ids_with_reserved_characters_are_one_path_segment(http: httpx.Client) -> None:
    odd = ["a/b?c=1#frag", "with space é ü 文", "..", "%2F", "trailing/"]
    ingested = http.post(
        "/api/v1/ingest?wait=true",
        json={"documents": [{"id": d, "text": f"Odd id number {i}."} for i, d in enumerate(odd)]},
    )
    assert ingested.status_code == 200, ingested.text
    for i, doc_id in enumerate(odd):
        path = "/api/v1/documents/" + quote(doc_id, safe="").replace(".", "%2E")
        read = http.get(path, params={"include": "text"})
        assert read.status_code == 200, (doc_id, read.text)
        assert (read.json()["doc_id"], read.json()["text"]) == (doc_id, f"Odd id number {i}.")
        assert http.delete(path, params={"wait": "true"}).json()["status"] == "deleted"
        assert http.get(path).json()["status"] == "deleted"


def test_an_id_twice_in_one_request_the_last_one_wins(http: httpx.Client) -> None:
    response = http.post(
        "/api/v1/ingest?wait=true",
        json={
            "documents": [
                {"id": "twice", "text": "The first draft about walruses.", "title": "One"},
                {"id": "once", "text": "A document about narwhals."},
                {"id": "twice", "text": "The second draft about pelicans.", "title": "Two"},
            ]
        },
    )
    assert response.status_code == 200, response.text
    first, once, last = response.json()["documents"]
    assert (first["doc_id"], first["status"], "event_id" in first) == ("twice", "superseded", False)
    assert (once["status"], last["status"]) == ("indexed", "indexed")
    assert first["version"] != last["version"]
    read = http.get("/api/v1/documents/twice", params={"include": "text,chunks"}).json()
    assert (read["title"], read["text"], read["version"]) == (
        "Two",
        "The second draft about pelicans.",
        last["version"],
    )
    assert len(read["chunks_indexed"]) == 1
    walruses = http.post("/api/v1/search", json={"query": "walruses", "mode": "bm25"}).json()
    assert all(r["doc_id"] != "twice" for r in walruses["results"])


def test_the_list_pages_through_every_document_by_status(http: httpx.Client) -> None:
    everything = listed(http, limit=2)
    ids = [d["doc_id"] for d in everything]
    assert {d["id"] for d in DOCS} <= set(ids)
    assert len(ids) == len(set(ids))  # nothing changed meanwhile: no repeats
    indexed = listed(http, limit=3, status="indexed")
    assert {d["status"] for d in indexed} == {"indexed"}
    assert {d["id"] for d in DOCS} <= {d["doc_id"] for d in indexed}
    volcano = next(d for d in indexed if d["doc_id"] == "volcano")
    assert volcano["chunks"] == 1 and volcano["version"] and volcano["event_id"]
    assert listed(http, status="failed") == []

    page = http.get("/api/v1/documents", params={"limit": 1}).json()
    assert len(page["documents"]) == 1 and page["next"]
    for params, field in (
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"status": "gone"}, "status"),
        ({"sort": "id"}, "sort"),
    ):
        refused = http.get("/api/v1/documents", params=params)
        assert refused.status_code == 422, params
        assert refused.json()["error"]["field"] == field, refused.text


def test_boolean_filters_over_http(http: httpx.Client) -> None:
    docs = [
        {"id": f"flagged-{flag}", "text": f"Harbor lantern note {flag}.", "metadata": {"ok": flag}}
        for flag in (True, False)
    ] + [{"id": "flagged-1", "text": "Harbor lantern note one.", "metadata": {"ok": 1}}]
    assert http.post("/api/v1/ingest?wait=true", json={"documents": docs}).status_code == 200
    for value, expected in (
        (True, {"flagged-True"}),
        (False, {"flagged-False"}),
        (1, {"flagged-1"}),
    ):
        found = http.post(
            "/api/v1/search", json={"query": "harbor lantern", "filters": {"ok": value}}
        ).json()["results"]
        assert {r["doc_id"] for r in found} == expected, value


def test_a_batch_answers_as_single_searches_do_each_recorded(http: httpx.Client) -> None:
    searches = [
        {"query": "which hormone controls glucose uptake", "top_k": 2},
        {"query": "lava and magma", "mode": "bm25", "top_k": 3},
        {"query": "reliable byte streams", "rerank": True, "diversity": 0.3},
        {"query": "plants", "filters": {"topic": "biology", "year": {"gte": 2015}}},
    ]
    batch = http.post("/api/v1/search/batch", json={"searches": searches})
    assert batch.status_code == 200, batch.text
    responses = batch.json()["responses"]
    assert len(responses) == len(searches)
    for search, response in zip(searches, responses, strict=True):
        alone = http.post("/api/v1/search", json=search).json()
        assert [(r["chunk_id"], r["score"], r["scores"]) for r in response["results"]] == [
            (r["chunk_id"], r["score"], r["scores"]) for r in alone["results"]
        ]
        assert (response["mode"], response["reranked"]) == (alone["mode"], alone["reranked"])
        assert {"embed", "search", "fusion", "total"} <= set(response["timings_ms"])
    assert [r["doc_id"] for r in responses[3]["results"]] == ["insulin"]
    ids = [r["retrieval_id"] for r in responses]
    assert len(set(ids)) == len(ids)
    embeds = {r["timings_ms"]["embed"] for r in responses}
    assert len(embeds) == 1  # one embedding for the batch
    for i, retrieval_id in enumerate(ids):
        deadline = time.monotonic() + 10
        while (found := http.get(f"/api/v1/retrievals/{retrieval_id}")).status_code != 200:
            assert time.monotonic() < deadline, f"retrieval {i} never recorded"
            time.sleep(0.05)
        recorded = found.json()
        assert recorded["query"] == searches[i]["query"]
        assert [r["chunk_id"] for r in recorded["results"]] == [
            r["chunk_id"] for r in responses[i]["results"]
        ]


def test_a_batch_is_checked_whole_and_names_the_search_at_fault(http: httpx.Client) -> None:
    def refused(body: object) -> dict[str, Any]:
        response = http.post("/api/v1/search/batch", json=body)
        assert response.status_code == 422, response.text
        error: dict[str, Any] = response.json()["error"]
        return error

    assert refused({"searches": [{"query": "ok"}, {"query": " \t"}]})["field"] == (
        "searches[1].query"
    )
    assert refused({"searches": [{"query": "ok"}, {"query": "x", "top_k": 0}]})["field"] == (
        "searches[1].top_k"
    )
    bad_filter = {"query": "x", "filters": {"year": {"gte": 1, "any": [1]}}}
    assert refused({"searches": [bad_filter]})["field"] == "searches[0].filters.year"
    assert refused({"searches": []})["field"] == "searches"
    too_many = refused({"searches": [{"query": "x"}] * 17})
    assert too_many["field"] == "searches" and "RAG_MAX_BATCH_SEARCHES" in too_many["message"]
    spec = http.get("/openapi.json").json()
    batch = spec["components"]["schemas"]["BatchSearchRequest"]["properties"]["searches"]
    assert (batch["minItems"], batch["maxItems"]) == (1, 16)


@pytest.fixture(scope="module")
def paused(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that accepts documents and never indexes them: every one stays pending."""
    srv = Server(
        tmp_path_factory.mktemp("paused") / "data",
        env={"RAG_PROJECTOR_IN_PROCESS": "false"},
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_a_pending_document_shows_the_version_waiting(paused: Server) -> None:
    with paused.client() as http:
        docs = [{"id": f"p{i}", "text": f"Pending text {i}.", "title": f"P{i}"} for i in range(25)]
        accepted = http.post("/api/v1/ingest", json={"documents": docs})
        assert accepted.status_code == 202, accepted.text
        read = http.get("/api/v1/documents/p3", params={"include": "text,chunks"}).json()
        assert (read["status"], read["title"], read["text"]) == ("pending", "P3", "Pending text 3.")
        assert read["chunks_indexed"] == [] and "chunks" not in read
        assert read["version"] == accepted.json()["documents"][3]["version"]
        pending = listed(http, limit=4, status="pending")
        assert sorted(d["doc_id"] for d in pending) == sorted(d["id"] for d in docs)
        assert listed(http, status="indexed") == []
        # A delete waiting: the document has no content to show any more.
        assert http.delete("/api/v1/documents/p0").status_code == 202
        waiting = http.get("/api/v1/documents/p0", params={"include": "text"}).json()
        assert waiting["status"] == "pending" and "version" not in waiting
        assert "title" not in waiting and "text" not in waiting
