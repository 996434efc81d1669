"""Document resources: POST /api/v1/ingest, GET /api/v1/documents (a tenant's, by page), GET and
DELETE /api/v1/documents/{id}, and the erasures DELETE ...?erase=true starts (GET
/api/v1/erasures/{id})."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from app.api.codec import decode, json_response, parse_query, read_body
from app.api.guard import has_scope, tenant_of
from app.api.schemas import (
    MAX_METADATA_DEPTH,
    DeleteResponse,
    DocumentChunk,
    DocumentList,
    DocumentListQuery,
    DocumentQuery,
    DocumentStatus,
    IngestedDocument,
    IngestRequest,
    IngestResponse,
)
from app.bootstrap import Services
from app.domain.doc_status import DocView
from app.domain.records import ChunkingParams, DocumentIn
from app.errors import Forbidden, InvalidRequest, NotFound
from app.services.ingest import Accepted
from app.telemetry.tracing import current_traceparent

# W3C trace context; anything else in the header is dropped rather than stored in an event.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


async def ingest(request: Request) -> Response:
    services: Services = request.app.state.services
    wait = _wait(request)
    body = decode(await read_body(request, services.settings.max_body_bytes), IngestRequest)
    _check_limits(body, services.settings.max_text_chars)
    default = services.default_chunking
    size = body.chunk_size or default.size
    overlap = (
        body.chunk_overlap if body.chunk_overlap is not None else min(default.overlap, size // 2)
    )
    accepted = await services.ingest.ingest(
        tenant_of(request),
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


def _check_limits(body: IngestRequest, max_text_chars: int) -> None:
    for i, doc in enumerate(body.documents):
        if len(doc.text) > max_text_chars:
            raise InvalidRequest(
                f"text is longer than {max_text_chars} characters (RAG_MAX_TEXT_CHARS)",
                field=f"documents[{i}].text",
            )
        for key, value in doc.metadata.items():
            if _deeper_than(value, MAX_METADATA_DEPTH):
                raise InvalidRequest(
                    f"metadata values nest at most {MAX_METADATA_DEPTH} levels deep",
                    field=f"documents[{i}].metadata.{key}",
                )


def _deeper_than(value: object, levels: int) -> bool:
    """Whether lists/objects nest more than `levels` deep (looks no deeper than that)."""
    if isinstance(value, dict | list):
        if levels == 0:
            return True
        children = value.values() if isinstance(value, dict) else value
        return any(_deeper_than(child, levels - 1) for child in children)
    return False


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
    params = parse_query(dict(request.query_params), DocumentQuery)
    include = set((params.include or "").split(","))
    read = await services.documents.read(
        tenant_of(request), doc_id, text="text" in include, chunks="chunks" in include
    )
    if read is None:
        raise NotFound(f"document {doc_id!r} is not indexed")
    document = _status(read.view)
    document.title, document.metadata = read.title, read.metadata
    document.accepted_at, document.text = read.accepted_at, read.text
    if read.chunks is not None:
        document.chunks_indexed = [
            DocumentChunk(
                chunk_id=c.chunk_id,
                chunk_index=c.chunk_index,
                version=c.version,
                event_id=c.event_id,
                section=c.section,
                text=c.text,
                embed_text=c.embed_text,
            )
            for c in read.chunks
        ]
    return json_response(document)


async def list_documents(request: Request) -> Response:
    services: Services = request.app.state.services
    params = parse_query(dict(request.query_params), DocumentListQuery)
    page = await services.documents.page(
        tenant_of(request), status=params.status, limit=params.limit, cursor=params.cursor
    )
    return json_response(
        DocumentList(documents=[_status(view) for view in page.documents], next=page.next)
    )


def _status(view: DocView) -> DocumentStatus:
    return DocumentStatus(
        doc_id=view.doc_id,
        status=view.status,
        version=view.version,
        chunks=view.chunks if view.status == "indexed" else None,
        event_id=view.event_id,
        error=view.error,
    )


async def delete_document(request: Request) -> Response:
    services: Services = request.app.state.services
    doc_id = request.path_params["doc_id"]
    if _flag(request, "erase"):
        return await _erase(request, services, doc_id)
    accepted = await services.ingest.delete(
        tenant_of(request), doc_id, traceparent=_traceparent(request), wait=_wait(request)
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


async def _erase(request: Request, services: Services, doc_id: str) -> Response:
    """Delete the document now, and record the erasure the projecting process carries out."""
    if not has_scope(request, "admin"):
        raise Forbidden("erasing a document needs the `admin` scope")
    tenant = tenant_of(request)
    try:
        accepted = await services.ingest.delete(tenant, doc_id, traceparent=_traceparent(request))
        event_id, status = accepted.event_id, accepted.status
    except NotFound:
        # Deleted already (or its delete is pending): erasure still has to remove its past.
        view = await services.ingest.status(tenant, doc_id)
        if view is None or view.event_id is None:
            raise
        event_id, status = view.event_id, "deleted" if view.status == "deleted" else "pending"
    erasure = await services.index_side.eraser.request(tenant, doc_id, delete_event=event_id)
    return json_response(
        DeleteResponse(doc_id=doc_id, event_id=event_id or "", status=status, erasure=erasure),
        202,
        headers={"Location": f"/api/v1/erasures/{erasure.erasure_id}"},
    )


async def get_erasure(request: Request) -> Response:
    services: Services = request.app.state.services
    erasure_id = request.path_params["erasure_id"]
    erasure = await services.index_side.eraser.get(erasure_id)
    if erasure is None or erasure.tenant != tenant_of(request):
        raise NotFound(f"erasure {erasure_id!r} is not known")
    return json_response(erasure)


def _wait(request: Request) -> bool:
    return _flag(request, "wait")


def _flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise InvalidRequest(f"{name} must be true or false", field=name)
    return raw in ("true", "1")


def _traceparent(request: Request) -> str | None:
    """The request's span, for the projector to link to; with tracing off, the caller's."""
    current = current_traceparent()
    if current is not None:
        return current
    value = request.headers.get("traceparent", "").strip().lower()
    return value if _TRACEPARENT.match(value) else None
