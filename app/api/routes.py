"""The route table: one entry per endpoint, from which Starlette routes and OpenAPI are built."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import __version__
from app.api import documents, quality, reindex, retrievals, search, system
from app.api.codec import json_response
from app.api.guard import guard
from app.api_keys import Scope
from app.events import RetrievalRecorded
from app.schemas import (
    Condition,
    DeleteResponse,
    DocumentInput,
    DocumentStatus,
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
    SearchRequest,
    SearchResponse,
    Stats,
)

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
        summary="A replay's phase and progress (the latest one only)",
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


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    """Deep-merge a struct's `openapi_schema` (rules beyond its field types) into its schema."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _inlined(schema: Any, components: dict[str, Any]) -> Any:
    """`schema` with every $ref to a component replaced by that component (no cycles here)."""
    if isinstance(schema, list):
        return [_inlined(item, components) for item in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(_REF):
        return _inlined(components[ref.removeprefix(_REF)], components)
    return {key: _inlined(value, components) for key, value in schema.items()}


_REF = "#/components/schemas/"


def openapi_spec() -> dict[str, Any]:
    types = sorted(
        {t for e in ENDPOINTS for t in [e.request, *e.responses.values()] if t is not None}
        # Condition: referenced from SearchRequest.filters' hand-written schema; both: they
        # carry an `openapi_schema` to merge.
        | {Condition, DocumentInput},
        key=lambda t: t.__name__,
    )
    _, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    for t in types:
        _merge(components[t.__name__], getattr(t, "openapi_schema", {}))
    # Request bodies spelled out whole: schemathesis' coverage phase cannot draw a valid
    # body through a $ref inside an array or map (it then sends invalid ones as valid).
    for t in {e.request for e in ENDPOINTS if e.request is not None}:
        components[t.__name__] = _inlined(components[t.__name__], components)
    paths: dict[str, dict[str, Any]] = {}
    for e in ENDPOINTS:
        path = e.path.replace(":path}", "}")
        op: dict[str, Any] = {
            "summary": e.summary,
            "operationId": f"{e.method.lower()}_{e.handler.__name__}",
            "responses": {
                str(status): {
                    "description": "error"
                    if status >= 400 and t is ErrorBody
                    else "accepted"
                    if status == 202
                    else "ok",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{t.__name__}"}
                        }
                    },
                }
                for status, t in e.responses.items()
            },
        }
        if e.scope is not None:
            _secure(op, e.scope)
        for status, answer in op["responses"].items():
            if status.startswith("2") and (e.method, e.path) in _LINKS:
                answer["links"] = _LINKS[e.method, e.path]
        parameters: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 1},
            }
            for name in ("doc_id", "retrieval_id", "job_id")
            if f"{{{name}}}" in path
        ]
        if 202 in e.responses and 200 in e.responses:  # accepted now, or applied with ?wait
            parameters.append(
                {
                    "name": "wait",
                    "in": "query",
                    "required": False,
                    "description": "wait (up to RAG_INGEST_WAIT_SECONDS) until applied",
                    "schema": {"type": "boolean", "default": False},
                }
            )
        if e.query is not None:
            schema = msgspec.json.schema(e.query)
            props = schema["$defs"][e.query.__name__]["properties"]
            parameters += [
                {"name": name, "in": "query", "required": False, "schema": prop}
                for name, prop in props.items()
            ]
        if parameters:
            op["parameters"] = parameters
        if e.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{e.request.__name__}"}
                    }
                },
            }
        paths.setdefault(path, {})[e.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "rag-pipeline", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from RAG_API_KEYS_FILE (docs/security.md); "
                    "not needed when the server runs without one",
                }
            },
        },
    }


# OpenAPI links: what a response's ids can be used for next (clients, and fuzzers' stateful
# phase, which otherwise only ever asks for retrieval ids that do not exist). None from ingest
# to the document: a deleted document's GET answers 200 `deleted` by design (a client polling
# its delete sees it applied), which a fuzzer's use-after-free check reads as a survivor.
_LINKS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/search"): {
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
    },
}

_RATE_HEADERS = {
    name: {"description": description, "schema": {"type": "integer", "minimum": 0}}
    for name, description in (
        ("RateLimit-Limit", "requests the key may make at once (its bucket's size)"),
        ("RateLimit-Remaining", "requests left in the bucket"),
        ("RateLimit-Reset", "seconds until the bucket is full again"),
    )
}


def _secure(op: dict[str, Any], scope: str) -> None:
    """An endpoint behind an API key: what it needs, and the 401/403/429 it may answer."""
    op["security"] = [{"bearer": []}]
    op["description"] = f"Needs an API key with the `{scope}` scope."
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for answer in op["responses"].values():
        answer["headers"] = dict(_RATE_HEADERS)
    op["responses"]["401"] = {
        "description": "no API key, or not a valid one",
        "headers": {
            "WWW-Authenticate": {"required": True, "schema": {"type": "string"}},
        },
        "content": error,
    }
    op["responses"]["403"] = {
        "description": f"the API key lacks the `{scope}` scope",
        "content": error,
    }
    op["responses"]["429"] = {
        "description": "the API key's rate limit is exhausted",
        "headers": {
            "Retry-After": {
                "required": True,
                "description": "seconds to wait",
                "schema": {"type": "integer", "minimum": 1},
            },
            **_RATE_HEADERS,
        },
        "content": error,
    }


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
    spec = openapi_spec()

    async def openapi(request: Request) -> Response:
        return json_response(spec)

    by_path: dict[str, dict[str, Handler]] = {}
    for e in ENDPOINTS:
        by_path.setdefault(e.path, {})[e.method] = _handler(e)
    table: list[Route] = [
        Route(path, handler, methods=[method])
        if len(handlers) == 1
        else MethodsRoute(path, handlers)
        for path, handlers in by_path.items()
        for method, handler in list(handlers.items())[:1]
    ]
    table.append(Route("/openapi.json", openapi, methods=["GET"]))
    return table
