"""The Python client of the service's HTTP API: `Client` (sync) and `AsyncClient`, every endpoint.

Results are the API's own wire structs (app/api/schemas.py), so the client and the server
cannot disagree on a field. A 429 or 503 is retried after the server's `Retry-After` (or a
capped exponential backoff with jitter), as is a connection that could not be made; any
other error status raises an `ApiError` subclass carrying the API's error body. Ids are
escaped into the URL whatever they hold (`/`, `?`, `#`, spaces, any Unicode).

    from app.client import Client

    with Client("http://localhost:8000", api_key="...") as rag:
        rag.ingest([{"id": "insulin", "text": "Insulin is a peptide hormone ..."}], wait=True)
        for hit in rag.search("which hormone controls glucose uptake", top_k=3).results:
            print(hit.score, hit.doc_id, hit.text)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from app.api.schemas import (
    BatchSearchResponse,
    CompactionJob,
    DeadLetterDetail,
    DeadLetterList,
    DeleteResponse,
    DocumentInput,
    DocumentList,
    DocumentStatus,
    DroppedDeadLetter,
    ErrorBody,
    ErrorDetail,
    FeedbackAccepted,
    Health,
    IngestResponse,
    Readiness,
    ReindexJob,
    RequeueResult,
    SearchResponse,
    Stats,
)
from app.domain.events import RetrievalRecorded
from app.services.erasure import Erasure
from app.services.quality import QualityReport

__all__ = [
    "ApiError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "InvalidRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "UnavailableError",
    "send_batches",
]

T = TypeVar("T")
Document = DocumentInput | Mapping[str, Any]
DocStatus = Literal["pending", "indexed", "deleted", "failed"]


# --- errors ---------------------------------------------------------------------------


class ApiError(Exception):
    """The API answered an error status. `error` is its body (`code`, `message`, `field`)
    when it sent one, else None (a proxy's page, say); `body` is the body as text."""

    def __init__(
        self, status: int, body: str, *, error: ErrorDetail | None = None, retry_after: float | None
    ) -> None:
        what = f"{error.code}: {error.message}" if error is not None else body[:500]
        field = f" (field {error.field})" if error is not None and error.field else ""
        super().__init__(f"HTTP {status}: {what}{field}")
        self.status = status
        self.body = body
        self.error = error
        self.retry_after = retry_after  # seconds, from the Retry-After header

    @property
    def code(self) -> str | None:
        return None if self.error is None else self.error.code

    @property
    def field(self) -> str | None:
        return None if self.error is None else self.error.field


class InvalidRequestError(ApiError):
    """400, 413 or 422: the request cannot be accepted as it is; `field` names the culprit."""


class AuthenticationError(ApiError):
    """401: no API key, or not a valid one."""


class PermissionDeniedError(ApiError):
    """403: the key lacks the scope the endpoint needs."""


class NotFoundError(ApiError):
    """404: no such document, retrieval, job, erasure or dead letter (for this tenant)."""


class ConflictError(ApiError):
    """409: a replay or compaction runs already, or a dead letter cannot be requeued."""


class RateLimitError(ApiError):
    """429 after the retries: the key's rate limit stayed exhausted."""


class UnavailableError(ApiError):
    """503 after the retries: a dependency (index, Redis, embedder) or the memory budget."""


_ERRORS: dict[int, type[ApiError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    429: RateLimitError,
    503: UnavailableError,
}
_RETRIED = frozenset({429, 503})


def _error(response: httpx.Response) -> ApiError:
    try:
        error: ErrorDetail | None = msgspec.json.decode(response.content, type=ErrorBody).error
    except msgspec.DecodeError:
        error = None
    return _ERRORS.get(response.status_code, ApiError)(
        response.status_code, response.text, error=error, retry_after=_retry_after(response)
    )


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # absent, or an HTTP date, which this API never sends


# --- requests -------------------------------------------------------------------------


def segment(value: str) -> str:
    """One path segment holding `value` exactly: every reserved character escaped, `/`
    included (the server's `{doc_id:path}` takes it back), and `.`/`..` too, which an HTTP
    stack would otherwise resolve away."""
    escaped = quote(value, safe="")
    return escaped.replace(".", "%2E") if value in (".", "..") else escaped


class _Call(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    """One request and how to read its answer."""

    method: str
    path: str
    result: type[T]
    params: dict[str, str] | None = None
    body: Any = None
    # Error statuses that still carry a `result` (GET /ready's 503).
    also: frozenset[int] = frozenset()


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _clean(params: Mapping[str, Any]) -> dict[str, str]:
    return {
        k: _flag(v) if isinstance(v, bool) else str(v) for k, v in params.items() if v is not None
    }


class _Calls:
    """Every endpoint as a `_Call`; the clients below only send them."""

    @staticmethod
    def ingest(
        documents: Sequence[Document],
        wait: bool,
        chunk_size: int | None,
        chunk_overlap: int | None,
    ) -> _Call[IngestResponse]:
        body: dict[str, Any] = {"documents": list(documents)}
        if chunk_size is not None:
            body["chunk_size"] = chunk_size
        if chunk_overlap is not None:
            body["chunk_overlap"] = chunk_overlap
        return _Call(
            method="POST",
            path="/api/v1/ingest",
            params={"wait": _flag(wait)},
            body=body,
            result=IngestResponse,
        )

    @staticmethod
    def search(query: str, options: Mapping[str, Any]) -> _Call[SearchResponse]:
        body = {"query": query, **{k: v for k, v in options.items() if v is not None}}
        return _Call(method="POST", path="/api/v1/search", body=body, result=SearchResponse)

    @staticmethod
    def search_batch(searches: Sequence[Mapping[str, Any]]) -> _Call[BatchSearchResponse]:
        return _Call(
            method="POST",
            path="/api/v1/search/batch",
            body={"searches": [dict(s) for s in searches]},
            result=BatchSearchResponse,
        )

    @staticmethod
    def document(doc_id: str, text: bool, chunks: bool) -> _Call[DocumentStatus]:
        include = ",".join(name for name, wanted in (("text", text), ("chunks", chunks)) if wanted)
        return _Call(
            method="GET",
            path=f"/api/v1/documents/{segment(doc_id)}",
            params={"include": include} if include else None,
            result=DocumentStatus,
        )

    @staticmethod
    def documents(
        status: DocStatus | None, limit: int | None, cursor: str | None
    ) -> _Call[DocumentList]:
        return _Call(
            method="GET",
            path="/api/v1/documents",
            params=_clean({"status": status, "limit": limit, "cursor": cursor}),
            result=DocumentList,
        )

    @staticmethod
    def delete(doc_id: str, wait: bool, erase: bool) -> _Call[DeleteResponse]:
        params = {"erase": "true"} if erase else {"wait": _flag(wait)}
        return _Call(
            method="DELETE",
            path=f"/api/v1/documents/{segment(doc_id)}",
            params=params,
            result=DeleteResponse,
        )

    @staticmethod
    def erasure(erasure_id: str) -> _Call[Erasure]:
        return _Call(method="GET", path=f"/api/v1/erasures/{segment(erasure_id)}", result=Erasure)

    @staticmethod
    def retrieval(retrieval_id: str) -> _Call[RetrievalRecorded]:
        return _Call(
            method="GET",
            path=f"/api/v1/retrievals/{segment(retrieval_id)}",
            result=RetrievalRecorded,
        )

    @staticmethod
    def feedback(
        retrieval_id: str, relevance: int, doc_id: str | None, chunk_id: str | None
    ) -> _Call[FeedbackAccepted]:
        body = {"retrieval_id": retrieval_id, "relevance": relevance}
        body |= {"doc_id": doc_id} if doc_id is not None else {}
        body |= {"chunk_id": chunk_id} if chunk_id is not None else {}
        return _Call(method="POST", path="/api/v1/feedback", body=body, result=FeedbackAccepted)

    @staticmethod
    def quality(hours: int, k: int) -> _Call[QualityReport]:
        return _Call(
            method="GET",
            path="/api/v1/quality",
            params=_clean({"hours": hours, "k": k}),
            result=QualityReport,
        )

    @staticmethod
    def stats() -> _Call[Stats]:
        return _Call(method="GET", path="/api/v1/stats", result=Stats)

    @staticmethod
    def dead_letters(
        limit: int, order: Literal["newest", "oldest"], after: str | None
    ) -> _Call[DeadLetterList]:
        return _Call(
            method="GET",
            path="/api/v1/dead-letters",
            params=_clean({"limit": limit, "order": order, "after": after}),
            result=DeadLetterList,
        )

    @staticmethod
    def dead_letter(letter_id: str) -> _Call[DeadLetterDetail]:
        return _Call(
            method="GET",
            path=f"/api/v1/dead-letters/{segment(letter_id)}",
            result=DeadLetterDetail,
        )

    @staticmethod
    def requeue_dead_letter(letter_id: str) -> _Call[RequeueResult]:
        return _Call(
            method="POST",
            path=f"/api/v1/dead-letters/{segment(letter_id)}/requeue",
            result=RequeueResult,
        )

    @staticmethod
    def drop_dead_letter(letter_id: str) -> _Call[DroppedDeadLetter]:
        return _Call(
            method="DELETE",
            path=f"/api/v1/dead-letters/{segment(letter_id)}",
            result=DroppedDeadLetter,
        )

    @staticmethod
    def reindex() -> _Call[ReindexJob]:
        return _Call(method="POST", path="/api/v1/reindex", result=ReindexJob)

    @staticmethod
    def reindex_job(job_id: str) -> _Call[ReindexJob]:
        return _Call(method="GET", path=f"/api/v1/reindex/{segment(job_id)}", result=ReindexJob)

    @staticmethod
    def compact() -> _Call[CompactionJob]:
        return _Call(method="POST", path="/api/v1/compact", result=CompactionJob)

    @staticmethod
    def compaction_job(job_id: str) -> _Call[CompactionJob]:
        return _Call(method="GET", path=f"/api/v1/compact/{segment(job_id)}", result=CompactionJob)

    @staticmethod
    def health() -> _Call[Health]:
        return _Call(method="GET", path="/health", result=Health)

    @staticmethod
    def ready() -> _Call[Readiness]:
        return _Call(method="GET", path="/ready", result=Readiness, also=frozenset({503}))


def _search_options(
    top_k: int | None,
    mode: Literal["dense", "bm25", "hybrid"] | None,
    rerank: bool | None,
    min_score: float | None,
    diversity: float | None,
    filters: Mapping[str, Any] | None,
) -> dict[str, Any]:
    return {
        "top_k": top_k,
        "mode": mode,
        "rerank": rerank,
        "min_score": min_score,
        "diversity": diversity,
        "filters": None if filters is None else dict(filters),
    }


class _Retrying:
    """When to try a request again and how long to wait first."""

    def __init__(self, retries: int, backoff: float, max_wait: float) -> None:
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait

    def wait(self, attempt: int, failure: ApiError | httpx.TransportError) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up now."""
        if attempt >= self.retries:
            return None
        if isinstance(failure, ApiError):
            if failure.status not in _RETRIED:
                return None
            if failure.retry_after is not None:
                # The server says when; past our bound, waiting is not worth it.
                return failure.retry_after if failure.retry_after <= self.max_wait else None
        elif not isinstance(failure, httpx.ConnectError):
            return None  # it may have reached the server: not ours to repeat
        return random.uniform(0, min(self.max_wait, self.backoff * 2**attempt))


def _decoded(call: _Call[T], response: httpx.Response) -> T:
    if response.status_code >= 400 and response.status_code not in call.also:
        raise _error(response)
    return msgspec.json.decode(response.content, type=call.result)


def _encoded(call: _Call[Any], encoder: msgspec.json.Encoder) -> dict[str, Any]:
    """The arguments httpx takes for `call`."""
    content = None if call.body is None else encoder.encode(call.body)
    headers = {"content-type": "application/json"} if content is not None else None
    return {
        "method": call.method,
        "url": call.path,
        "params": call.params,
        "content": content,
        "headers": headers,
    }


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _pending(response: IngestResponse) -> list[int]:
    return [i for i, d in enumerate(response.documents) if d.status == "pending"]


def _settle(response: IngestResponse, i: int, now: DocumentStatus | None) -> None:
    """Move a pending ingest result on to what the document's status says now (None: the
    server could not record it as pending, so it is unknown until applied)."""
    doc = response.documents[i]
    if now is None or now.status == "pending":
        return
    if now.event_id != doc.event_id:
        doc.status = "superseded"
        return
    doc.status, doc.chunks, doc.error = now.status, now.chunks, now.error


# --- the clients ----------------------------------------------------------------------


class Client:
    """The API over a blocking connection pool. Use it as a context manager, or `close()`.

    `retries`: how often a 429, a 503 or a refused connection is tried again; `backoff`: the
    first wait (doubling, with jitter) when the server gives no Retry-After; `max_wait`: the
    longest wait accepted (a longer Retry-After raises at once). `timeout`: of one request,
    and of the polling `ingest(wait=True)` and `erase(wait=True)` do."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 300.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_wait: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            headers=_headers(api_key),
            transport=transport,
        )
        self._timeout = timeout
        self._retrying = _Retrying(retries, backoff, max_wait)
        self._encoder = msgspec.json.Encoder()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                return _decoded(call, self._http.request(**_encoded(call, self._encoder)))
            except (ApiError, httpx.TransportError) as failure:
                wait = self._retrying.wait(attempt, failure)
                if wait is None:
                    raise
            time.sleep(wait)
            attempt += 1

    # documents

    def ingest(
        self,
        documents: Sequence[Document],
        *,
        wait: bool = False,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
    ) -> IngestResponse:
        """Send documents (DocumentInput structs or dicts: id, text, title, metadata); the
        same id again replaces the document. `wait`: return once each is indexed (the server
        waits up to RAG_INGEST_WAIT_SECONDS, then this polls until the client's timeout)."""
        response = self._send(_Calls.ingest(documents, wait, chunk_size, chunk_overlap))
        deadline = time.monotonic() + self._timeout
        while wait and _pending(response) and time.monotonic() < deadline:
            time.sleep(0.2)
            for i in _pending(response):
                _settle(response, i, self._known(response.documents[i].doc_id))
        return response

    def _known(self, doc_id: str) -> DocumentStatus | None:
        try:
            return self.document(doc_id)
        except NotFoundError:
            return None

    def document(self, doc_id: str, *, text: bool = False, chunks: bool = False) -> DocumentStatus:
        """Status, version, title and metadata; with `text` its text, with `chunks` the
        chunks the index holds. NotFoundError if the document was never accepted."""
        return self._send(_Calls.document(doc_id, text, chunks))

    def documents(
        self,
        *,
        status: DocStatus | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> DocumentList:
        """One page of the tenant's documents; pass its `next` as `cursor` for the next."""
        return self._send(_Calls.documents(status, limit, cursor))

    def iter_documents(
        self, *, status: DocStatus | None = None, page_size: int = 100
    ) -> Iterator[DocumentStatus]:
        """Every document of the tenant, page after page (one may come twice if documents
        are added or removed meanwhile; see DocumentList)."""
        cursor = None
        while True:
            page = self.documents(status=status, limit=page_size, cursor=cursor)
            yield from page.documents
            if page.next is None:
                return
            cursor = page.next

    def delete(self, doc_id: str, *, wait: bool = False) -> DeleteResponse:
        """Delete a document (status pending, or with `wait` deleted once its chunks are gone)."""
        return self._send(_Calls.delete(doc_id, wait, erase=False))

    def erase(self, doc_id: str, *, wait: bool = False, poll: float = 1.0) -> Erasure:
        """Erase a document (admin scope): every stored trace of its text and metadata goes.
        `wait`: follow it until `complete` (or the client's timeout; it then returns the
        erasure as it stands)."""
        erasure = self._send(_Calls.delete(doc_id, False, erase=True)).erasure
        assert erasure is not None  # an erase always answers its erasure
        deadline = time.monotonic() + self._timeout
        while wait and erasure.phase != "complete" and time.monotonic() < deadline:
            time.sleep(poll)
            erasure = self.erasure(erasure.erasure_id)
        return erasure

    def erasure(self, erasure_id: str) -> Erasure:
        return self._send(_Calls.erasure(erasure_id))

    # search

    def search(
        self,
        query: str,
        *,
        top_k: int | None = None,
        mode: Literal["dense", "bm25", "hybrid"] | None = None,
        rerank: bool | None = None,
        min_score: float | None = None,
        diversity: float | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> SearchResponse:
        """One search; unset options take the server's defaults (README, "Search")."""
        options = _search_options(top_k, mode, rerank, min_score, diversity, filters)
        return self._send(_Calls.search(query, options))

    def search_batch(self, searches: Sequence[Mapping[str, Any]]) -> list[SearchResponse]:
        """Several searches in one request (each a search body: {"query": ..., "top_k": ...}),
        their queries embedded together; the responses in the same order."""
        return self._send(_Calls.search_batch(searches)).responses

    def retrieval(self, retrieval_id: str) -> RetrievalRecorded:
        return self._send(_Calls.retrieval(retrieval_id))

    def feedback(
        self,
        retrieval_id: str,
        *,
        relevance: int,
        doc_id: str | None = None,
        chunk_id: str | None = None,
    ) -> FeedbackAccepted:
        """Judge a result of a recorded retrieval: 0 not relevant, 1 relevant, 2 highly."""
        return self._send(_Calls.feedback(retrieval_id, relevance, doc_id, chunk_id))

    def quality(self, *, hours: int = 24, k: int = 10) -> QualityReport:
        return self._send(_Calls.quality(hours, k))

    # operations

    def stats(self) -> Stats:
        return self._send(_Calls.stats())

    def dead_letters(
        self,
        *,
        limit: int = 20,
        order: Literal["newest", "oldest"] = "newest",
        after: str | None = None,
    ) -> DeadLetterList:
        return self._send(_Calls.dead_letters(limit, order, after))

    def dead_letter(self, letter_id: str) -> DeadLetterDetail:
        return self._send(_Calls.dead_letter(letter_id))

    def requeue_dead_letter(self, letter_id: str) -> RequeueResult:
        return self._send(_Calls.requeue_dead_letter(letter_id))

    def drop_dead_letter(self, letter_id: str) -> DroppedDeadLetter:
        return self._send(_Calls.drop_dead_letter(letter_id))

    def reindex(self) -> ReindexJob:
        """Start a replay (operator scope; ConflictError while one runs)."""
        return self._send(_Calls.reindex())

    def reindex_job(self, job_id: str) -> ReindexJob:
        return self._send(_Calls.reindex_job(job_id))

    def compact(self) -> CompactionJob:
        """Start a compaction of the document stream (operator scope)."""
        return self._send(_Calls.compact())

    def compaction_job(self, job_id: str) -> CompactionJob:
        return self._send(_Calls.compaction_job(job_id))

    def health(self) -> Health:
        return self._send(_Calls.health())

    def ready(self) -> Readiness:
        """Readiness and each dependency's check (a 503 is an answer here, not an error)."""
        return self._send(_Calls.ready())


class AsyncClient:
    """`Client`'s API for asyncio: the same methods, awaited (`iter_documents` is an async
    iterator). Use it as an async context manager, or `await aclose()`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 300.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_wait: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            headers=_headers(api_key),
            transport=transport,
        )
        self._timeout = timeout
        self._retrying = _Retrying(retries, backoff, max_wait)
        self._encoder = msgspec.json.Encoder()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.request(**_encoded(call, self._encoder))
                return _decoded(call, response)
            except (ApiError, httpx.TransportError) as failure:
                wait = self._retrying.wait(attempt, failure)
                if wait is None:
                    raise
            await asyncio.sleep(wait)
            attempt += 1

    # documents

    async def ingest(
        self,
        documents: Sequence[Document],
        *,
        wait: bool = False,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
    ) -> IngestResponse:
        """See Client.ingest."""
        response = await self._send(_Calls.ingest(documents, wait, chunk_size, chunk_overlap))
        deadline = time.monotonic() + self._timeout
        while wait and _pending(response) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            for i in _pending(response):
                _settle(response, i, await self._known(response.documents[i].doc_id))
        return response

    async def _known(self, doc_id: str) -> DocumentStatus | None:
        try:
            return await self.document(doc_id)
        except NotFoundError:
            return None

    async def document(
        self, doc_id: str, *, text: bool = False, chunks: bool = False
    ) -> DocumentStatus:
        return await self._send(_Calls.document(doc_id, text, chunks))

    async def documents(
        self,
        *,
        status: DocStatus | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> DocumentList:
        return await self._send(_Calls.documents(status, limit, cursor))

    async def iter_documents(
        self, *, status: DocStatus | None = None, page_size: int = 100
    ) -> AsyncIterator[DocumentStatus]:
        cursor = None
        while True:
            page = await self.documents(status=status, limit=page_size, cursor=cursor)
            for document in page.documents:
                yield document
            if page.next is None:
                return
            cursor = page.next

    async def delete(self, doc_id: str, *, wait: bool = False) -> DeleteResponse:
        return await self._send(_Calls.delete(doc_id, wait, erase=False))

    async def erase(self, doc_id: str, *, wait: bool = False, poll: float = 1.0) -> Erasure:
        """See Client.erase."""
        erasure = (await self._send(_Calls.delete(doc_id, False, erase=True))).erasure
        assert erasure is not None  # an erase always answers its erasure
        deadline = time.monotonic() + self._timeout
        while wait and erasure.phase != "complete" and time.monotonic() < deadline:
            await asyncio.sleep(poll)
            erasure = await self.erasure(erasure.erasure_id)
        return erasure

    async def erasure(self, erasure_id: str) -> Erasure:
        return await self._send(_Calls.erasure(erasure_id))

    # search

    async def search(
        self,
        query: str,
        *,
        top_k: int | None = None,
        mode: Literal["dense", "bm25", "hybrid"] | None = None,
        rerank: bool | None = None,
        min_score: float | None = None,
        diversity: float | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> SearchResponse:
        options = _search_options(top_k, mode, rerank, min_score, diversity, filters)
        return await self._send(_Calls.search(query, options))

    async def search_batch(self, searches: Sequence[Mapping[str, Any]]) -> list[SearchResponse]:
        return (await self._send(_Calls.search_batch(searches))).responses

    async def retrieval(self, retrieval_id: str) -> RetrievalRecorded:
        return await self._send(_Calls.retrieval(retrieval_id))

    async def feedback(
        self,
        retrieval_id: str,
        *,
        relevance: int,
        doc_id: str | None = None,
        chunk_id: str | None = None,
    ) -> FeedbackAccepted:
        return await self._send(_Calls.feedback(retrieval_id, relevance, doc_id, chunk_id))

    async def quality(self, *, hours: int = 24, k: int = 10) -> QualityReport:
        return await self._send(_Calls.quality(hours, k))

    # operations

    async def stats(self) -> Stats:
        return await self._send(_Calls.stats())

    async def dead_letters(
        self,
        *,
        limit: int = 20,
        order: Literal["newest", "oldest"] = "newest",
        after: str | None = None,
    ) -> DeadLetterList:
        return await self._send(_Calls.dead_letters(limit, order, after))

    async def dead_letter(self, letter_id: str) -> DeadLetterDetail:
        return await self._send(_Calls.dead_letter(letter_id))

    async def requeue_dead_letter(self, letter_id: str) -> RequeueResult:
        return await self._send(_Calls.requeue_dead_letter(letter_id))

    async def drop_dead_letter(self, letter_id: str) -> DroppedDeadLetter:
        return await self._send(_Calls.drop_dead_letter(letter_id))

    async def reindex(self) -> ReindexJob:
        return await self._send(_Calls.reindex())

    async def reindex_job(self, job_id: str) -> ReindexJob:
        return await self._send(_Calls.reindex_job(job_id))

    async def compact(self) -> CompactionJob:
        return await self._send(_Calls.compact())

    async def compaction_job(self, job_id: str) -> CompactionJob:
        return await self._send(_Calls.compaction_job(job_id))

    async def health(self) -> Health:
        return await self._send(_Calls.health())

    async def ready(self) -> Readiness:
        return await self._send(_Calls.ready())


async def send_batches(
    client: AsyncClient,
    docs: Sequence[DocumentInput],
    batch: int,
    *,
    in_flight: int = 2,
    on_done: Callable[[IngestResponse, int], None] | None = None,
) -> None:
    """Ingest in requests of `batch` documents, `in_flight` at a time, each waited for, so
    the server chunks, checks and writes one request while it embeds another."""
    gate = asyncio.Semaphore(in_flight)

    async def one(part: Sequence[DocumentInput]) -> None:
        async with gate:
            response = await client.ingest(part, wait=True)
        if on_done is not None:
            on_done(response, len(part))

    async with asyncio.TaskGroup() as group:
        for start in range(0, len(docs), batch):
            group.create_task(one(docs[start : start + batch]))
