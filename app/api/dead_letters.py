"""Dead letters over HTTP: list, show, requeue and drop the caller's tenant's (scope admin)."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from app.api.codec import json_response, parse_query
from app.api.guard import tenant_of
from app.api.schemas import (
    DeadLetterDetail,
    DeadLetterList,
    DeadLetterQuery,
    DeadLetterSummary,
    DocumentStatus,
    DroppedDeadLetter,
    RequeueResult,
)
from app.bootstrap import Services
from app.domain.doc_status import DocView
from app.services.dead_letters import DeadLetter, DeadLetters


async def dead_letters(request: Request) -> Response:
    params = parse_query(dict(request.query_params), DeadLetterQuery)
    page = await _service(request).page(
        tenant=tenant_of(request), order=params.order, after=params.after, limit=params.limit
    )
    return json_response(
        DeadLetterList(dead_letters=[_summary(letter) for letter in page.letters], next=page.next)
    )


async def dead_letter(request: Request) -> Response:
    letter, document = await _service(request).show(
        request.path_params["letter_id"], tenant=tenant_of(request)
    )
    return json_response(
        DeadLetterDetail(
            **msgspec.structs.asdict(_summary(letter)),
            event=letter.raw.decode("utf-8", "backslashreplace"),
            document=None if document is None else _document(document),
        )
    )


async def requeue_dead_letter(request: Request) -> Response:
    done = await _service(request).requeue(
        request.path_params["letter_id"], tenant=tenant_of(request)
    )
    assert done.letter.doc_id is not None  # a requeueable letter names its document
    return json_response(
        RequeueResult(
            id=done.letter.id,
            doc_id=done.letter.doc_id,
            outcome=done.outcome,
            event_id=done.event_id,
        )
    )


async def drop_dead_letter(request: Request) -> Response:
    letter = await _service(request).drop(
        request.path_params["letter_id"], tenant=tenant_of(request)
    )
    return json_response(DroppedDeadLetter(id=letter.id, doc_id=letter.doc_id, dropped=True))


def _service(request: Request) -> DeadLetters:
    services: Services = request.app.state.services
    return services.dead_letters


def _summary(letter: DeadLetter) -> DeadLetterSummary:
    return DeadLetterSummary(
        id=letter.id,
        doc_id=letter.doc_id,
        event_type=letter.event_type,
        version=letter.version,
        source_id=letter.source_id,
        error=letter.error,
        deliveries=letter.deliveries,
        dead_lettered_at=letter.at,
        requeueable=letter.problem is None,
        problem=letter.problem,
    )


def _document(view: DocView) -> DocumentStatus:
    return DocumentStatus(
        doc_id=view.doc_id,
        status=view.status,
        version=view.version,
        chunks=view.chunks if view.status == "indexed" else None,
        event_id=view.event_id,
        error=view.error,
    )
