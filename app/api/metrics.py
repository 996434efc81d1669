"""GET /metrics: the Prometheus exposition of the API and of the worker, gauges read at scrape."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import Response

from app.bootstrap import IndexSide, held_index_side
from app.errors import RagError
from app.services.projector import GROUP
from app.telemetry import metrics

log = logging.getLogger(__name__)

# A scrape must answer even while Redis or the index does not: the gauges keep their last
# values and every counter is still there.
_GAUGE_TIMEOUT_SECONDS = 2.0


async def scrape(request: Request) -> Response:
    side = held_index_side(request.app.state)
    if side is not None:
        try:
            await asyncio.wait_for(_refresh(side), _GAUGE_TIMEOUT_SECONDS)
        except (TimeoutError, RagError) as exc:
            log.debug("gauges not refreshed for this scrape: %s", exc)
    body, content_type = metrics.exposition(request.headers.get("accept", ""))
    return Response(body, headers={"Content-Type": content_type})


async def _refresh(side: IndexSide) -> None:
    streams, events = side.streams, side.event_log
    length, group, stats, dead, usage = await asyncio.gather(
        events.length(streams.documents),
        events.group_info(streams.documents, GROUP),
        side.index.stats(),
        events.length(streams.dead_letter),
        side.usage.read(),
    )
    metrics.set_queue(
        0 if group is None else group.pending,
        # No group yet: nothing was ever delivered, so everything is lag; a lag Redis cannot
        # tell (after trims) counts as none rather than as a guess.
        length if group is None else (group.lag or 0),
    )
    metrics.set_index_points(stats.points)
    metrics.set_dead_letters(dead)
    for size in usage.streams:
        metrics.set_stream(size.stream, size.entries, size.memory_bytes)
    metrics.set_redis_memory(usage.memory.used_bytes, usage.memory.max_bytes)
