"""Operational endpoints: /health (process), /ready (dependencies), /api/v1/stats."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from app.api.codec import json_response
from app.api.guard import has_scope, tenant_of
from app.api.schemas import (
    CacheInfo,
    EventsInfo,
    Health,
    IndexInfo,
    Readiness,
    RecorderInfo,
    Stats,
    StorageInfo,
    StreamStorage,
)
from app.bootstrap import IndexSide, Services, held_index_side
from app.services.projector import GROUP


async def health(request: Request) -> Response:
    return json_response(Health(status="ok"))


async def ready(request: Request) -> Response:
    """/ready of `serve` and of `worker` alike: each holds an IndexSide once started."""
    side: IndexSide | None = held_index_side(request.app.state)
    checks = {"index": False, "event_log": False}
    if side is not None:
        checks = await side.checks()
    # When this process projects, a projector that died would leave every ingest pending.
    task: asyncio.Task[None] | None = getattr(request.app.state, "projector_task", None)
    if task is not None:
        checks["projector"] = not task.done()
    # Set on SIGTERM: the load balancer should stop sending while in-flight requests finish.
    checks["accepting"] = not getattr(request.app.state, "draining", False)
    ok = all(checks.values())
    return json_response(
        Readiness(ready=ok, checks=checks), 200 if ok else 503, None if ok else {"Retry-After": "1"}
    )


async def stats(request: Request) -> Response:
    services: Services = request.app.state.services
    streams = services.streams
    log = services.event_log
    index, length, group, dead, retrieved, judged = await asyncio.gather(
        services.index.stats(tenant_of(request)),
        log.length(streams.documents),
        log.group_info(streams.documents, GROUP),
        log.length(streams.dead_letter),
        log.length(streams.retrievals),
        log.length(streams.feedback),
    )
    storage = await _storage(services) if has_scope(request, "operator") else None
    cache = services.cache_stats()
    recorder = services.recorder
    lookups = cache.hits + cache.misses
    return json_response(
        Stats(
            index=IndexInfo(
                model_id=services.embedder.model_id,
                dim=services.embedder.dim,
                documents=index.documents,
                chunks=index.points,
                indexed_vectors=index.indexed_vectors,
                segments=index.segments,
            ),
            events=EventsInfo(
                documents_stream=length,
                indexer_pending=0 if group is None else group.pending,
                # No group yet: nothing was ever delivered, so everything is lag.
                indexer_lag=length if group is None else group.lag,
                dead_letters=dead,
                retrievals_stream=retrieved,
                feedback_stream=judged,
                indexer_consumers=0 if group is None else group.consumers,
            ),
            cache=CacheInfo(
                hits=cache.hits,
                misses=cache.misses,
                writes=cache.writes,
                errors=cache.errors,
                hit_rate=cache.hits / lookups if lookups else None,
            ),
            recorder=RecorderInfo(
                appended=recorder.appended, buffered=recorder.buffered, dropped=recorder.dropped
            ),
            storage=storage,
        )
    )


async def _storage(services: Services) -> StorageInfo:
    usage = await services.index_side.usage.read()
    memory = usage.memory
    return StorageInfo(
        streams={
            size.stream: StreamStorage(
                entries=size.entries,
                memory_bytes=size.memory_bytes,
                memory_sampled_at=size.memory_sampled_at,
            )
            for size in usage.streams
        },
        redis_used_bytes=memory.used_bytes,
        redis_max_bytes=memory.max_bytes,
        redis_used_ratio=memory.used_bytes / memory.max_bytes if memory.max_bytes else None,
        redis_maxmemory_policy=memory.policy,
    )
