"""A small asynchronous client of the service's HTTP API, used by the CLI and benchmarks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import msgspec

from app.api.schemas import DocumentInput, IngestResponse, ReindexJob, SearchResponse


async def send_batches(
    client: Client,
    docs: Sequence[DocumentInput],
    batch: int,
    *,
    in_flight: int = 2,
    on_done: Callable[[IngestResponse, int], None] | None = None,
) -> None:
    """Ingest in requests of `batch` documents, `in_flight` at a time, so the server chunks,
    checks and writes one request while it embeds another."""
    gate = asyncio.Semaphore(in_flight)

    async def one(part: Sequence[DocumentInput]) -> None:
        async with gate:
            response = await client.ingest(part)
        if on_done is not None:
            on_done(response, len(part))

    async with asyncio.TaskGroup() as group:
        for start in range(0, len(docs), batch):
            group.create_task(one(docs[start : start + batch]))


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


class Client:
    def __init__(
        self, base_url: str, *, timeout: float = 300.0, api_key: str | None = None
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, headers=headers
        )
        self._timeout = timeout
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

    async def ingest(self, documents: Sequence[DocumentInput]) -> IngestResponse:
        """Send documents and return once the server has applied them: the request itself
        waits up to the server's RAG_INGEST_WAIT_SECONDS, after which the documents still
        pending are polled until they are not (or the client's timeout passes)."""
        raw = await self._call("POST", "/api/v1/ingest?wait=true", {"documents": list(documents)})
        response = msgspec.json.decode(raw, type=IngestResponse)
        deadline = time.monotonic() + self._timeout
        while True:
            pending = [d for d in response.documents if d.status == "pending"]
            if not pending or time.monotonic() > deadline:
                return response
            await asyncio.sleep(0.2)
            for doc in pending:
                current = await self.document(doc.doc_id)
                if current is None or current["status"] == "pending":
                    continue
                doc.status = (
                    "superseded" if current["event_id"] != doc.event_id else current["status"]
                )
                doc.chunks = current.get("chunks")
                doc.error = current.get("error")

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

    async def reindex(self) -> ReindexJob:
        """Start a replay on the server (409 while one runs there)."""
        return msgspec.json.decode(await self._call("POST", "/api/v1/reindex"), type=ReindexJob)

    async def reindex_job(self, job_id: str) -> ReindexJob:
        raw = await self._call("GET", f"/api/v1/reindex/{job_id}")
        return msgspec.json.decode(raw, type=ReindexJob)
