"""Recorded retrievals: GET /api/v1/retrievals/{id} and POST /api/v1/feedback."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from app.api.codec import decode, json_response, read_body
from app.api.guard import tenant_of
from app.api.schemas import FeedbackAccepted, FeedbackRequest
from app.bootstrap import Services
from app.domain.events import FeedbackGiven
from app.errors import InvalidRequest, NotFound


async def get_retrieval(request: Request) -> Response:
    services: Services = request.app.state.services
    retrieval_id = request.path_params["retrieval_id"]
    # Another tenant's retrieval is as unknown as one never made: 404, not 403.
    event = await services.recorder.find(tenant_of(request), retrieval_id)
    if event is None:
        raise NotFound(f"retrieval {retrieval_id!r} is not recorded (or has expired)")
    return json_response(event)


async def feedback(request: Request) -> Response:
    services: Services = request.app.state.services
    tenant = tenant_of(request)
    body = decode(await read_body(request, services.settings.max_body_bytes), FeedbackRequest)
    if (body.doc_id is None) == (body.chunk_id is None):
        raise InvalidRequest("name exactly one of doc_id and chunk_id", field="doc_id")
    if await services.recorder.find(tenant, body.retrieval_id) is None:
        raise NotFound(f"retrieval {body.retrieval_id!r} is not recorded (or has expired)")
    event_id = await services.event_log.append(
        services.streams.feedback,
        FeedbackGiven(
            retrieval_id=body.retrieval_id,
            tenant=tenant,
            doc_id=body.doc_id,
            chunk_id=body.chunk_id,
            relevance=body.relevance,
            at=time.time(),
        ),
    )
    return json_response(
        FeedbackAccepted(retrieval_id=body.retrieval_id, event_id=event_id), status=201
    )
