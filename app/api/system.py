"""Operational endpoints: /health (process), /ready (dependencies), /api/v1/stats."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from app.api.codec import json_response
from app.domain import DEFAULT_TENANT
from app.schemas import Health, IndexInfo, Readiness, Stats
from app.wiring import Services


async def health(request: Request) -> Response:
    return json_response(Health(status="ok"))


async def ready(request: Request) -> Response:
    services: Services | None = getattr(request.app.state, "services", None)
    checks = {"index": services is not None and await services.index.ready()}
    ok = all(checks.values())
    return json_response(
        Readiness(ready=ok, checks=checks), 200 if ok else 503, None if ok else {"Retry-After": "1"}
    )


async def stats(request: Request) -> Response:
    services: Services = request.app.state.services
    index = await services.index.stats(DEFAULT_TENANT)
    return json_response(
        Stats(
            index=IndexInfo(
                model_id=services.embedder.model_id,
                dim=services.embedder.dim,
                documents=index.documents,
                chunks=index.points,
                indexed_vectors=index.indexed_vectors,
                segments=index.segments,
            )
        )
    )
