"""GET /api/v1/quality: the caller's tenant's search quality over the last `hours` hours."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from app.api.codec import json_response, parse_query
from app.api.guard import tenant_of
from app.api.schemas import QualityQuery
from app.bootstrap import Services
from app.services.quality_window import window_report


async def quality(request: Request) -> Response:
    services: Services = request.app.state.services
    params = parse_query(dict(request.query_params), QualityQuery)
    until = time.time()
    report = await window_report(
        services.event_log,
        services.streams,
        tenant=tenant_of(request),
        since=until - params.hours * 3600,
        until=until,
        k=params.k,
    )
    return json_response(report)
