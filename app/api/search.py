"""POST /api/v1/search and /search/batch: decode, run the pipeline, encode results with their
stage scores."""

from __future__ import annotations

import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from app.api.codec import (
    decode,
    field_of,
    json_response,
    read_body,
    with_whole_numbers_as_int,
)
from app.api.guard import take_more, tenant_of
from app.api.schemas import (
    BatchSearchRequest,
    BatchSearchResponse,
    Condition,
    FilterValue,
    SearchRequest,
    SearchResponse,
    SearchResult,
)
from app.bootstrap import Services
from app.domain.events import RecordedResult, RetrievalRecorded, query_sha256
from app.domain.records import FieldFilter
from app.errors import InvalidRequest
from app.services.query import SearchOutcome, SearchParams
from app.telemetry.tracing import current_trace_id


async def search(request: Request) -> Response:
    services: Services = request.app.state.services
    tenant = tenant_of(request)
    body = decode(await read_body(request, services.settings.max_body_bytes), SearchRequest)
    outcome = await services.pipeline.search(_params(body, tenant, services))
    trace_id = current_trace_id()
    if services.settings.record_retrievals:
        record(services, tenant, body, outcome, trace_id)
    return json_response(_response(body, outcome, trace_id))


async def search_batch(request: Request) -> Response:
    """Up to RAG_MAX_BATCH_SEARCHES searches: their queries embedded in one batch, each
    answered (and recorded, with its own retrieval id) as POST /api/v1/search would."""
    services: Services = request.app.state.services
    tenant = tenant_of(request)
    body = decode(await read_body(request, services.settings.max_body_bytes), BatchSearchRequest)
    most = services.settings.max_batch_searches
    if len(body.searches) > most:
        raise InvalidRequest(
            f"at most {most} searches per request (RAG_MAX_BATCH_SEARCHES), "
            f"got {len(body.searches)}",
            field="searches",
        )
    params = []
    for i, one in enumerate(body.searches):
        try:
            params.append(_params(one, tenant, services))
        except InvalidRequest as exc:
            exc.field = f"searches[{i}]" + (f".{exc.field}" if exc.field else "")
            raise
    # Each search counts against the key's rate, as it would sent on its own.
    await take_more(request, len(params) - 1)
    outcomes = await services.pipeline.search_many(params)
    trace_id = current_trace_id()
    if services.settings.record_retrievals:
        for one, outcome in zip(body.searches, outcomes, strict=True):
            record(services, tenant, one, outcome, trace_id)
    return json_response(
        BatchSearchResponse(
            responses=[
                _response(one, outcome, trace_id)
                for one, outcome in zip(body.searches, outcomes, strict=True)
            ]
        )
    )


def _params(body: SearchRequest, tenant: str, services: Services) -> SearchParams:
    """A search's parameters, checked beyond what its schema says."""
    if not body.query.strip():
        raise InvalidRequest("query is empty or only whitespace", field="query")
    if len(body.query) > services.settings.max_query_chars:
        raise InvalidRequest(
            f"query is longer than {services.settings.max_query_chars} characters "
            "(RAG_MAX_QUERY_CHARS)",
            field="query",
        )
    return SearchParams(
        query=body.query,
        tenant=tenant,
        top_k=body.top_k,
        mode=body.mode,
        filters=to_filters(body.filters or {}),
        min_score=body.min_score,
        diversity=body.diversity,
        rerank=body.rerank,
    )


def _response(body: SearchRequest, outcome: SearchOutcome, trace_id: str | None) -> SearchResponse:
    return SearchResponse(
        results=[
            SearchResult(
                doc_id=h.doc_id,
                chunk_id=h.chunk_id,
                chunk_index=h.chunk_index,
                score=round(h.score, 6),
                title=h.title,
                text=h.text,
                section=h.section,
                metadata=h.metadata,
                scores={k: round(v, 6) for k, v in h.scores.items()},
            )
            for h in outcome.hits
        ],
        retrieval_id=outcome.retrieval_id,
        mode=body.mode,
        reranked=outcome.reranked,
        timings_ms=outcome.timings_ms,
        rerank_skipped=outcome.rerank_skipped,
        trace_id=trace_id,
    )


def record(
    services: Services,
    tenant: str,
    body: SearchRequest,
    outcome: SearchOutcome,
    trace_id: str | None,
) -> None:
    """Hand the retrieval to the recorder, which appends it off the response path."""
    services.recorder.record(
        RetrievalRecorded(
            retrieval_id=outcome.retrieval_id,
            tenant=tenant,
            query=None if services.settings.event_redact_queries else body.query,
            query_sha256=query_sha256(body.query)
            if services.settings.event_redact_queries
            else None,
            params={
                "top_k": body.top_k,
                "mode": body.mode,
                "min_score": body.min_score,
                "diversity": body.diversity,
                "rerank": outcome.reranked,
                "filters": sorted(body.filters or {}),
            },
            results=[
                RecordedResult(
                    chunk_id=h.chunk_id, doc_id=h.doc_id, score=h.score, scores=dict(h.scores)
                )
                for h in outcome.hits
            ],
            timings_ms=outcome.timings_ms,
            trace_id=trace_id,
            at=time.time(),
        )
    )


def to_filters(filters: dict[str, msgspec.Raw]) -> list[FieldFilter]:
    out = []
    for key, raw in sorted(filters.items()):
        try:
            value = msgspec.json.decode(raw, type=FilterValue)
        except msgspec.ValidationError as exc:
            value = with_whole_numbers_as_int(raw, FilterValue)
            if value is None:
                inner = field_of(str(exc))
                raise InvalidRequest(
                    str(exc),
                    field=f"filters.{key}" + ("" if inner == "body" else f".{inner}"),
                    code="validation_error",
                ) from exc
        if not isinstance(value, Condition):
            out.append(FieldFilter(key=key, equals=value))
            continue
        ranged = any(v is not None for v in (value.gte, value.gt, value.lte, value.lt))
        if (value.any is None) == (not ranged):
            raise InvalidRequest(
                "a filter condition holds either `any` or a range (gte/gt/lte/lt), "
                "not both or neither",
                field=f"filters.{key}",
            )
        out.append(
            FieldFilter(
                key=key,
                any_of=_any_of(key, value.any),
                gte=value.gte,
                gt=value.gt,
                lte=value.lte,
                lt=value.lt,
            )
        )
    return out


def _any_of(key: str, values: list[str | int] | None) -> list[str] | list[int] | None:
    """The index matches a list of one type: all strings or all integers."""
    if values is None:
        return None
    strings = [v for v in values if isinstance(v, str)]
    if len(strings) == len(values) and strings:
        return strings
    integers = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    if len(integers) == len(values) and integers:
        return integers
    raise InvalidRequest(
        "`any` needs at least one value, all strings or all integers", field=f"filters.{key}.any"
    )
