"""Document resources: POST /api/v1/ingest, GET and DELETE /api/v1/documents/{id}."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from app.api.codec import decode, json_response, read_body
from app.domain import DEFAULT_TENANT, ChunkingParams, DocumentIn
from app.errors import NotFound
from app.schemas import (
    DeleteResponse,
    DocumentStatus,
    IngestedDocument,
    IngestRequest,
    IngestResponse,
)
from app.wiring import Services


async def ingest(request: Request) -> Response:
    services: Services = request.app.state.services
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
    )
    return json_response(
        IngestResponse(
            documents=[
                IngestedDocument(
                    doc_id=a.doc_id,
                    version=a.version,
                    status=a.status,  # type: ignore[arg-type]
                    chunks=a.chunks,
                )
                for a in accepted
            ]
        )
    )


async def get_document(request: Request) -> Response:
    services: Services = request.app.state.services
    doc_id = request.path_params["doc_id"]
    state = await services.ingest.status(DEFAULT_TENANT, doc_id)
    if state is None:
        raise NotFound(f"document {doc_id!r} is not indexed")
    return json_response(
        DocumentStatus(doc_id=doc_id, status="indexed", version=state.version, chunks=state.chunks)
    )


async def delete_document(request: Request) -> Response:
    services: Services = request.app.state.services
    doc_id = request.path_params["doc_id"]
    removed = await services.ingest.delete(DEFAULT_TENANT, doc_id)
    if removed == 0:
        raise NotFound(f"document {doc_id!r} is not indexed")
    return json_response(DeleteResponse(doc_id=doc_id, status="deleted", chunks_removed=removed))
