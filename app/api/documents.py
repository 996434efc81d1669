"""Document resources: POST /api/v1/ingest, GET and DELETE /api/v1/documents/{id}."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from app.api.codec import decode, json_response, read_body
from app.domain import DEFAULT_TENANT, ChunkingParams, DocumentIn
from app.errors import InvalidRequest, NotFound
from app.ingest import Accepted
from app.schemas import (
    DeleteResponse,
    DocumentStatus,
    IngestedDocument,
    IngestRequest,
    IngestResponse,
)
from app.telemetry.tracing import current_traceparent
from app.wiring import Services

# W3C trace context; anything else in the header is dropped rather than stored in an event.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


async def ingest(request: Request) -> Response:
    services: Services = request.app.state.services
    wait = _wait(request)
    body = decode(await read_body(request, services.settings.max_body_bytes), IngestRequest)
    default = services.default_chunking
    size = body.chunk_size or default.size
    overlap = (
        body.chunk_overlap if body.chunk_overlap is not None else min(default.overlap, size // 2)
    )
    accepted = await services.ingest.ingest(
        DEFAULT_TENANT,
        [
            DocumentIn(id=d.id, text=d.text, title=d.title, metadata=d.metadata)
            for d in body.documents
        ],
        ChunkingParams(size=size, overlap=overlap),
        traceparent=_traceparent(request),
        wait=wait,
    )
    return json_response(
        IngestResponse(documents=[_ingested(a) for a in accepted]),
        202 if any(a.status == "pending" for a in accepted) else 200,
    )


def _ingested(accepted: Accepted) -> IngestedDocument:
    return IngestedDocument(
        doc_id=accepted.doc_id,
        version=accepted.version or "",
        event_id=accepted.event_id,
        status=accepted.status,
        chunks=accepted.chunks if accepted.status in ("indexed", "unchanged") else None,
        error=accepted.error,
    )


async def get_document(request: Request) -> Response:
    services: Services = request.app.state.services
    doc_id = request.path_params["doc_id"]
    view = await services.ingest.status(DEFAULT_TENANT, doc_id)
    if view is None:
        raise NotFound(f"document {doc_id!r} is not indexed")
    return json_response(
        DocumentStatus(
            doc_id=doc_id,
            status=view.status,
            version=view.version,
            chunks=view.chunks if view.status == "indexed" else None,
            event_id=view.event_id,
            error=view.error,
        )
    )


async def delete_document(request: Request) -> Response:
    services: Services = request.app.state.services
    doc_id = request.path_params["doc_id"]
    accepted = await services.ingest.delete(
        DEFAULT_TENANT, doc_id, traceparent=_traceparent(request), wait=_wait(request)
    )
    return json_response(
        DeleteResponse(
            doc_id=doc_id,
            event_id=accepted.event_id or "",  # always set: a delete appends an event
            status=accepted.status,
            error=accepted.error,
        ),
        202 if accepted.status == "pending" else 200,
    )


def _wait(request: Request) -> bool:
    raw = request.query_params.get("wait", "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise InvalidRequest("wait must be true or false", field="wait")
    return raw in ("true", "1")


def _traceparent(request: Request) -> str | None:
    """The request's span, for the projector to link to; with tracing off, the caller's."""
    current = current_traceparent()
    if current is not None:
        return current
    value = request.headers.get("traceparent", "").strip().lower()
    return value if _TRACEPARENT.match(value) else None
