"""Every kind of bad input gets a clear 4xx with a JSON error naming the field, never a 500."""

from __future__ import annotations

import httpx
import pytest


def assert_error(response: httpx.Response, status: int, field: str | None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] and error["message"]
    if field is not None:
        assert error["field"] == field, error
    return error


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "   \n\t"}, "query"),
        ({"query": "x", "top_k": 0}, "top_k"),
        ({"query": "x", "top_k": 1000}, "top_k"),
        ({"query": "x", "mode": "semantic"}, "mode"),
        ({"query": 42}, "query"),
        ({"query": "x", "top_k": "ten"}, "top_k"),
        ({"query": "x", "diversity": 1.5}, "diversity"),
        ({"query": "x", "min_score": 2}, "min_score"),
        ({"query": "x", "rerank": "yes"}, "rerank"),
        ({"query": "x", "colour": "red"}, "colour"),
        ({"top_k": 3}, "query"),
        ({"query": "x", "filters": {"year": {"gte": 1, "any": [1]}}}, "filters.year"),
        ({"query": "x", "filters": {"year": {}}}, "filters.year"),
        ({"query": "x", "filters": {"year": {"between": [1, 2]}}}, "filters.year.between"),
        ({"query": "x", "filters": {"bad key!": 1}}, "filters"),
        ({"query": "x" * 5000}, "query"),
    ],
)
def test_bad_search_requests(http: httpx.Client, body: dict, field: str) -> None:
    assert_error(http.post("/api/v1/search", json=body), 422, field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"documents": []}, "documents"),
        ({}, "documents"),
        ({"documents": [{"id": "a"}]}, "documents[0].text"),
        ({"documents": [{"id": "", "text": "t"}]}, "documents[0].id"),
        ({"documents": [{"id": "a", "text": "   "}]}, "documents[0].text"),
        ({"documents": [{"id": "a", "text": "t", "extra": 1}]}, "documents[0].extra"),
        ({"documents": [{"id": "a", "text": 5}]}, "documents[0].text"),
        ({"documents": [{"id": "a", "text": "t"}], "chunk_size": 5}, "chunk_size"),
        (
            {"documents": [{"id": "a", "text": "t"}], "chunk_size": 32, "chunk_overlap": 32},
            "chunk_overlap",
        ),
        ({"documents": "nope"}, "documents"),
    ],
)
def test_bad_ingest_requests(http: httpx.Client, body: dict, field: str) -> None:
    assert_error(http.post("/api/v1/ingest", json=body), 422, field)


@pytest.mark.parametrize("path", ["/api/v1/search", "/api/v1/ingest"])
@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"\xff\xfe\x00garbage", b'{"query": "\xff\xfe"}', b"", b"[1, 2]"],
)
def test_malformed_bodies(http: httpx.Client, path: str, raw: bytes) -> None:
    response = http.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert response.json()["error"]["field"] is not None


def test_body_over_the_limit_is_413(http: httpx.Client) -> None:
    huge = b'{"query": "' + b"a" * (10 * 1024 * 1024) + b'"}'
    assert_error(http.post("/api/v1/search", content=huge), 413, "body")


def test_unknown_route_and_method_are_json(http: httpx.Client) -> None:
    assert_error(http.get("/api/v1/nothing"), 404, None)
    assert_error(http.get("/api/v1/search"), 405, None)


def test_unknown_document_is_404(http: httpx.Client) -> None:
    assert_error(http.get("/api/v1/documents/never-ingested"), 404, None)
