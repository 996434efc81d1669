"""The route table: one entry per endpoint, from which Starlette routes and OpenAPI are built."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import __version__
from app.api import documents, quality, retrievals, search, system
from app.api.codec import json_response
from app.events import RetrievalRecorded
from app.schemas import (
    Condition,
    DeleteResponse,
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


_ERRORS = {400: ErrorBody, 413: ErrorBody, 422: ErrorBody, 503: ErrorBody}

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        method="POST",
        path="/api/v1/search",
        handler=search.search,
        summary="Hybrid search with rerank, min score and MMR",
        request=SearchRequest,
        responses={200: SearchResponse, **_ERRORS},
    ),
    Endpoint(
        method="POST",
        path="/api/v1/ingest",
        handler=documents.ingest,
        summary="Accept documents for indexing (replaces documents with the same id); 202 "
        "once their events are in the log, or with ?wait=true 200 once indexed",
        request=IngestRequest,
        responses={200: IngestResponse, 202: IngestResponse, **_ERRORS},
    ),
    Endpoint(
        method="GET",
        path="/api/v1/documents/{doc_id:path}",
        handler=documents.get_document,
        summary="A document's status (pending, indexed, deleted, failed) and version",
        responses={200: DocumentStatus, 404: ErrorBody, 503: ErrorBody},
    ),
    Endpoint(
        method="DELETE",
        path="/api/v1/documents/{doc_id:path}",
        handler=documents.delete_document,
        summary="Delete a document: 202 once the delete is in the log, or with ?wait=true "
        "200 once its chunks are gone",
        responses={200: DeleteResponse, 202: DeleteResponse, 404: ErrorBody, 503: ErrorBody},
    ),
    Endpoint(
        method="GET",
        path="/api/v1/retrievals/{retrieval_id}",
        handler=retrievals.get_retrieval,
        summary="A recorded retrieval: query (or its hash), parameters, results, stage scores",
        responses={200: RetrievalRecorded, 404: ErrorBody, 503: ErrorBody},
    ),
    Endpoint(
        method="POST",
        path="/api/v1/feedback",
        handler=retrievals.feedback,
        summary="Judge a result of a recorded retrieval (appended to the feedback stream)",
        request=FeedbackRequest,
        responses={201: FeedbackAccepted, 404: ErrorBody, **_ERRORS},
    ),
    Endpoint(
        method="GET",
        path="/api/v1/stats",
        handler=system.stats,
        summary="Index, event log and embedding cache figures",
        responses={200: Stats, 503: ErrorBody},
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


def openapi_spec() -> dict[str, Any]:
    types = sorted(
        {t for e in ENDPOINTS for t in [e.request, *e.responses.values()] if t is not None}
        | {Condition},  # referenced from SearchRequest.filters' hand-written schema
        key=lambda t: t.__name__,
    )
    _, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
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
        parameters: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 1},
            }
            for name in ("doc_id", "retrieval_id")
            if f"{{{name}}}" in path
        ]
        if 202 in e.responses:
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
        "components": {"schemas": components},
    }


def routes() -> list[Route]:
    spec = openapi_spec()

    async def openapi(request: Request) -> Response:
        return json_response(spec)

    table = [Route(e.path, e.handler, methods=[e.method]) for e in ENDPOINTS]
    table.append(Route("/openapi.json", openapi, methods=["GET"]))
    return table
