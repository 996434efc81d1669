"""The route table: one entry per endpoint, from which the Starlette routes are built (and
the OpenAPI document, app/api/openapi.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api import (
    compaction,
    dead_letters,
    documents,
    quality,
    reindex,
    retrievals,
    search,
    system,
)
from app.api.codec import json_response
from app.api.guard import guard
from app.api.keys import Scope
from app.api.openapi import openapi_spec
from app.api.schemas import (
    CompactionJob,
    DeadLetterDetail,
    DeadLetterList,
    DeadLetterQuery,
    DeleteQuery,
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
    Readiness,
    ReindexJob,
    RequeueResult,
    SearchRequest,
    SearchResponse,
    Stats,
)
from app.domain.events import RetrievalRecorded
from app.services.erasure import Erasure
from app.services.quality import QualityReport

Handler = Callable[[Request], Awaitable[Response]]


class Endpoint:
    """One operation of the API: its request line ("GET /path"), handler and OpenAPI
    description. Each status in `errors` answers an ErrorBody."""

    def __init__(
        self,
        route: str,
        handler: Handler,
        summary: str,
        *,
        scope: Scope | None,
        returns: dict[int, type],
        errors: tuple[int, ...] = (),
        request: type | None = None,
        query: type | None = None,
        links: dict[str, Any] | None = None,
    ) -> None:
        self.method, self.path = route.split(" ")
        self.handler = handler
        self.summary = summary
        # The API-key scope a caller needs (app/api/guard.py enforces it, and adds 401/403/429
        # to the OpenAPI responses); None: open to anyone, and no tenant to act for. "admin"
        # acts on the caller's tenant only; "operator" on every tenant at once (replay, compaction).
        self.scope = scope
        self.responses = returns | dict.fromkeys(errors, ErrorBody)
        self.request = request
        self.query = query  # a struct whose fields are the query parameters
        # OpenAPI links of the success responses: what their ids can be used for next.
        self.links = links or {}


# What an endpoint that reads a JSON body may answer besides its success.
_BODY_ERRORS = (400, 413, 422, 503)

# From a search to its recorded retrieval and to judging it (clients, and fuzzers' stateful
# phase, which otherwise only ever asks for retrieval ids that do not exist). None from ingest
# to the document: a deleted document's GET answers 200 `deleted` by design (a client polling
# its delete sees it applied), which a fuzzer's use-after-free check reads as a survivor.
_SEARCH_LINKS = {
    "GetRetrieval": {
        "operationId": "get_get_retrieval",
        "parameters": {"retrieval_id": "$response.body#/retrieval_id"},
    },
    "JudgeRetrieval": {
        "operationId": "post_feedback",
        "requestBody": {
            "retrieval_id": "$response.body#/retrieval_id",
            "doc_id": "$response.body#/results/0/doc_id",
            "relevance": 1,
        },
    },
}

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST /api/v1/search",
        search.search,
        "Hybrid search with rerank, min score and MMR",
        scope="search",
        request=SearchRequest,
        returns={200: SearchResponse},
        errors=_BODY_ERRORS,
        links=_SEARCH_LINKS,
    ),
    Endpoint(
        "POST /api/v1/ingest",
        documents.ingest,
        "Accept documents for indexing (replaces documents with the same id); 202 once their "
        "events are in the log, or with ?wait=true 200 once indexed",
        scope="ingest",
        request=IngestRequest,
        returns={200: IngestResponse, 202: IngestResponse},
        errors=_BODY_ERRORS,
    ),
    Endpoint(
        "GET /api/v1/documents/{doc_id:path}",
        documents.get_document,
        "A document's status (pending, indexed, deleted, failed) and version",
        scope="ingest",
        returns={200: DocumentStatus},
        errors=(404, 503),
    ),
    Endpoint(
        "DELETE /api/v1/documents/{doc_id:path}",
        documents.delete_document,
        "Delete a document: 202 once the delete is in the log, or with ?wait=true 200 once its "
        "chunks are gone. With ?erase=true (admin scope) erase it: every stored trace of its "
        "text and metadata is removed; 202 with the erasure to follow",
        scope="ingest",
        query=DeleteQuery,
        returns={200: DeleteResponse, 202: DeleteResponse},
        errors=(403, 404, 422, 503),
    ),
    Endpoint(
        "GET /api/v1/erasures/{erasure_id}",
        documents.get_erasure,
        "An erasure and how far it got: deleting, scrubbing (the streams, the embedding "
        "cache), purging (the index rebuilt without it), complete (with the time)",
        scope="admin",
        returns={200: Erasure},
        errors=(404, 503),
    ),
    Endpoint(
        "GET /api/v1/retrievals/{retrieval_id}",
        retrievals.get_retrieval,
        "A recorded retrieval: query (or its hash), parameters, results, stage scores",
        scope="search",
        returns={200: RetrievalRecorded},
        errors=(404, 503),
    ),
    Endpoint(
        "POST /api/v1/feedback",
        retrievals.feedback,
        "Judge a result of a recorded retrieval (appended to the feedback stream)",
        scope="search",
        request=FeedbackRequest,
        returns={201: FeedbackAccepted},
        errors=(404, *_BODY_ERRORS),
    ),
    Endpoint(
        "GET /api/v1/stats",
        system.stats,
        "Index, event log and embedding cache figures; with the `operator` scope too, each "
        "stream's entries and memory and the Redis memory in use and its limit",
        scope="admin",
        returns={200: Stats},
        errors=(503,),
    ),
    Endpoint(
        "POST /api/v1/reindex",
        reindex.start,
        "Replay: rebuild the index from the document stream into a new generation, then switch "
        "to it; 202 with the job, 409 while one runs (deployment-wide: every tenant's index)",
        scope="operator",
        returns={202: ReindexJob},
        errors=(409, 503),
    ),
    Endpoint(
        "GET /api/v1/reindex/{job_id}",
        reindex.status,
        "A replay's phase and progress (records kept a week)",
        scope="operator",
        returns={200: ReindexJob},
        errors=(404,),
    ),
    Endpoint(
        "POST /api/v1/compact",
        compaction.start,
        "Compact the document stream: keep each document's newest event (and deletes until "
        "they are settled and RAG_TOMBSTONE_RETENTION_HOURS old), online; 202 with the job, "
        "409 while one runs (deployment-wide: every tenant's documents)",
        scope="operator",
        returns={202: CompactionJob},
        errors=(409, 503),
    ),
    Endpoint(
        "GET /api/v1/compact/{job_id}",
        compaction.status,
        "A compaction's phase and progress (records kept a week)",
        scope="operator",
        returns={200: CompactionJob},
        errors=(404,),
    ),
    Endpoint(
        "GET /api/v1/quality",
        quality.quality,
        "Search quality over the last `hours` hours, from the retrieval and feedback streams: "
        "retrievals per hour, zero-result rate, stage latency percentiles, feedback "
        "precision@k and MRR",
        scope="admin",
        query=QualityQuery,
        returns={200: QualityReport},
        errors=(422, 503),
    ),
    Endpoint(
        "GET /api/v1/dead-letters",
        dead_letters.dead_letters,
        "The caller's dead letters (document events the projector gave up on), a page at a "
        "time, newest or oldest first",
        scope="admin",
        query=DeadLetterQuery,
        returns={200: DeadLetterList},
        errors=(422, 503),
    ),
    Endpoint(
        "GET /api/v1/dead-letters/{letter_id}",
        dead_letters.dead_letter,
        "One dead letter: the error, the event as stored, its document's status now",
        scope="admin",
        returns={200: DeadLetterDetail},
        errors=(404, 503),
    ),
    Endpoint(
        "POST /api/v1/dead-letters/{letter_id}/requeue",
        dead_letters.requeue_dead_letter,
        "Append the dead letter's event to the document stream again (the document is pending "
        "once more) and remove the dead letter; `superseded` instead when a newer change to "
        "the document was accepted since",
        scope="admin",
        returns={200: RequeueResult},
        errors=(404, 409, 503),
    ),
    Endpoint(
        "DELETE /api/v1/dead-letters/{letter_id}",
        dead_letters.drop_dead_letter,
        "Drop a dead letter: its event is deleted for good",
        scope="admin",
        returns={200: DroppedDeadLetter},
        errors=(404, 503),
    ),
    Endpoint(
        "GET /health",
        system.health,
        "Liveness: the process answers",
        scope=None,
        returns={200: Health},
    ),
    Endpoint(
        "GET /ready",
        system.ready,
        "Readiness: every dependency answers",
        scope=None,
        returns={200: Readiness, 503: Readiness},
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


# What the worker serves besides probes and metrics: it holds the index, so replays run there,
# and compactions with them.
WORKER_HANDLERS: tuple[Handler, ...] = (
    reindex.start,
    reindex.status,
    compaction.start,
    compaction.status,
)


def worker_routes() -> list[Route]:
    """The worker's API routes, guarded by the scopes ENDPOINTS declares for them."""
    return [
        Route(e.path, _handler(e), methods=[e.method])
        for e in ENDPOINTS
        if e.handler in WORKER_HANDLERS
    ]


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
