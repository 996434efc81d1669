"""A small asynchronous client of the service's HTTP API, used by the CLI and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import msgspec

from app.schemas import DocumentInput, IngestResponse, SearchResponse


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


class Client:
    def __init__(self, base_url: str, *, timeout: float = 300.0) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout)
        self._encoder = msgspec.json.Encoder()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: Any = None) -> bytes:
        content = None if body is None else self._encoder.encode(body)
        response = await self._http.request(
            method, path, content=content, headers={"content-type": "application/json"}
        )
        if response.status_code >= 400:
            raise ApiError(response.status_code, response.text)
        return response.content

    async def ingest(self, documents: Sequence[DocumentInput], **chunking: int) -> IngestResponse:
        body = {"documents": list(documents), **chunking}
        return msgspec.json.decode(
            await self._call("POST", "/api/v1/ingest", body), type=IngestResponse
        )

    async def search(self, query: str, **params: Any) -> SearchResponse:
        raw = await self._call("POST", "/api/v1/search", {"query": query, **params})
        return msgspec.json.decode(raw, type=SearchResponse)

    async def document(self, doc_id: str) -> dict[str, Any] | None:
        try:
            raw = await self._call("GET", f"/api/v1/documents/{doc_id}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        result: dict[str, Any] = msgspec.json.decode(raw)
        return result

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = msgspec.json.decode(await self._call("GET", "/api/v1/stats"))
        return result
