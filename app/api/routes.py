"""The route table: one entry per endpoint, from which the Starlette routes are built (and
the OpenAPI document, app/api/openapi.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api import dead_letters, documents, quality, reindex, retrievals, search, system
from app.api.codec import json_response
from app.api.guard import guard
from app.api.keys import Scope
from app.api.openapi import openapi_spec
from app.api.schemas import (
    DeadLetterDetail,
    DeadLetterList,
    DeadLetterQuery,
    DeleteResponse,
    DocumentStatus,
    DroppedDeadLetter,
    ErrorBody,
    FeedbackAccepted,
    FeedbackRequest,
    Health,
    IngestRequest,
    IngestResponse,
    QualityQuery,
    QualityReport,
    Readiness,
    ReindexJob,
    RequeueResult,
    SearchRequest,
    SearchResponse,
    Stats,
)
from app.domain.events import RetrievalRecorded

Handler = Callable[[Request], Awaitable[Response]]


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    method: str
    path: str
    handler: Handler
    summary: str
    request: type | None = None
    query: type | None = None  # a struct whose fields are the query parameters
    responses: dict[int, type] = msgspec.field(default_factory=dict)
    # The API-key scope a caller needs (app/api/guard.py enforces it, and adds 401/403/429 to
    # the OpenAPI responses); None: open to anyone, and no tenant to act for.
    scope: Scope | None = None


_ERRORS = {400: ErrorBody, 413: ErrorBody, 422: ErrorBody, 503: ErrorBody}

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        method="POST",
        path="/api/v1/search",
        handler=search.search,
        summary="Hybrid search with rerank, min score and MMR",
        request=SearchRequest,
        responses={200: SearchResponse, **_ERRORS},
        scope="search",
    ),
    Endpoint(
        method="POST",
        path="/api/v1/ingest",
        handler=documents.ingest,
        summary="Accept documents for indexing (replaces documents with the same id); 202 "
        "once their events are in the log, or with ?wait=true 200 once indexed",
        request=IngestRequest,
        responses={200: IngestResponse, 202: IngestResponse, **_ERRORS},
        scope="ingest",
    ),
    Endpoint(
        method="GET",
        path="/api/v1/documents/{doc_id:path}",
        handler=documents.get_document,
        summary="A document's status (pending, indexed, deleted, failed) and version",
        responses={200: DocumentStatus, 404: ErrorBody, 503: ErrorBody},
        scope="ingest",
    ),
    Endpoint(
        method="DELETE",
        path="/api/v1/documents/{doc_id:path}",
        handler=documents.delete_document,
        summary="Delete a document: 202 once the delete is in the log, or with ?wait=true "
        "200 once its chunks are gone",
        responses={
            200: DeleteResponse,
            202: DeleteResponse,
            404: ErrorBody,
            422: ErrorBody,
            503: ErrorBody,
        },
        scope="ingest",
    ),
    Endpoint(
        method="GET",
        path="/api/v1/retrievals/{retrieval_id}",
        handler=retrievals.get_retrieval,
        summary="A recorded retrieval: query (or its hash), parameters, results, stage scores",
        responses={200: RetrievalRecorded, 404: ErrorBody, 503: ErrorBody},
        scope="search",
    ),
    Endpoint(
        method="POST",
        path="/api/v1/feedback",
        handler=retrievals.feedback,
        summary="Judge a result of a recorded retrieval (appended to the feedback stream)",
        request=FeedbackRequest,
        responses={201: FeedbackAccepted, 404: ErrorBody, **_ERRORS},
        scope="search",
    ),
    Endpoint(
        method="GET",
        path="/api/v1/stats",
        handler=system.stats,
        summary="Index, event log and embedding cache figures",
        responses={200: Stats, 503: ErrorBody},
        scope="admin",
    ),
    Endpoint(
        method="POST",
        path="/api/v1/reindex",
        handler=reindex.start,
        summary="Replay: rebuild the index from the document stream into a new generation, "
        "then switch to it; 202 with the job, 409 while one runs",
        responses={202: ReindexJob, 409: ErrorBody, 503: ErrorBody},
        scope="admin",
    ),
    Endpoint(
        method="GET",
        path="/api/v1/reindex/{job_id}",
        handler=reindex.status,
        summary="A replay's phase and progress (records kept a week)",
        responses={200: ReindexJob, 404: ErrorBody},
        scope="admin",
    ),
    Endpoint(
        method="GET",
        path="/api/v1/quality",
        handler=quality.quality,
        summary="Search quality over the last `hours` hours, from the retrieval and feedback "
        "streams: retrievals per hour, zero-result rate, stage latency percentiles, "
        "feedback precision@k and MRR",
        query=QualityQuery,
        responses={200: QualityReport, 422: ErrorBody, 503: ErrorBody},
        scope="admin",
    ),
    Endpoint(
        method="GET",
        path="/api/v1/dead-letters",
        handler=dead_letters.dead_letters,
        summary="The caller's dead letters (document events the projector gave up on), "
        "a page at a time, newest or oldest first",
        query=DeadLetterQuery,
        responses={200: DeadLetterList, 422: ErrorBody, 503: ErrorBody},
        scope="admin",
    ),
    Endpoint(
        method="GET",
        path="/api/v1/dead-letters/{letter_id}",
        handler=dead_letters.dead_letter,
        summary="One dead letter: the error, the event as stored, its document's status now",
        responses={200: DeadLetterDetail, 404: ErrorBody, 503: ErrorBody},
        scope="admin",
    ),
    Endpoint(
        method="POST",
        path="/api/v1/dead-letters/{letter_id}/requeue",
        handler=dead_letters.requeue_dead_letter,
        summary="Append the dead letter's event to the document stream again (the document "
        "is pending once more) and remove the dead letter; `superseded` instead when a newer "
        "change to the document was accepted since",
        responses={200: RequeueResult, 404: ErrorBody, 409: ErrorBody, 503: ErrorBody},
        scope="admin",
    ),
    Endpoint(
        method="DELETE",
        path="/api/v1/dead-letters/{letter_id}",
        handler=dead_letters.drop_dead_letter,
        summary="Drop a dead letter: its event is deleted for good",
        responses={200: DroppedDeadLetter, 404: ErrorBody, 503: ErrorBody},
        scope="admin",
    ),
    Endpoint(
        method="GET",
        path="/health",
        handler=system.health,
        summary="Liveness: the process answers",
        responses={200: Health},
    ),
    Endpoint(
        method="GET",
        path="/ready",
        handler=system.ready,
        summary="Readiness: every dependency answers",
        responses={200: Readiness, 503: Readiness},
    ),
)


def _handler(endpoint: Endpoint) -> Handler:
    """The endpoint's handler, behind its scope's guard when it names one."""
    if endpoint.scope is None:
        return endpoint.handler
    return guard(endpoint.handler, endpoint.scope)


class MethodsRoute(Route):
    """One route for a path with several methods, each its own handler; `operations` names
    them per method, for the request metrics and spans (app/telemetry/http.py)."""

    def __init__(self, path: str, handlers: dict[str, Handler]) -> None:
        super().__init__(path, _by_method(handlers), methods=list(handlers))
        self.operations = {method: h.__name__ for method, h in handlers.items()}


def _by_method(handlers: dict[str, Handler]) -> Handler:
    """One handler for a path with several methods: Starlette then answers any other method
    with 405 and an Allow header naming all of them, not only the first route's."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return dispatch


def routes() -> list[Route]:
    spec = openapi_spec(ENDPOINTS)

    async def openapi(request: Request) -> Response:
        return json_response(spec)

    by_path: dict[str, dict[str, Handler]] = {}
    for e in ENDPOINTS:
        by_path.setdefault(e.path, {})[e.method] = _handler(e)
    table: list[Route] = []
    for path, handlers in by_path.items():
        if len(handlers) == 1:
            [(method, handler)] = handlers.items()
            table.append(Route(path, handler, methods=[method]))
        else:
            table.append(MethodsRoute(path, handlers))
    table.append(Route("/openapi.json", openapi, methods=["GET"]))
    return table
