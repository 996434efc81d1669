"""create_app / create_worker_app: the Starlette apps, their routes and their lifespans."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api import console, metrics, system
from app.api.codec import error_response, response_for
from app.api.memory_budget import MemoryBudget, MemoryBudgetMiddleware
from app.api.routes import routes, worker_routes
from app.bootstrap import IndexSide, Services, build_access, build_services
from app.errors import RagError
from app.heap import HeapTrimmer
from app.services.projector import Projector
from app.settings import Settings
from app.telemetry.http import TelemetryMiddleware

log = logging.getLogger(__name__)


def create_app(settings: Settings, services: Services | None = None) -> Starlette:
    """The API; given `services`, it uses them and leaves closing them to the caller.

    `settings.redis_url` must be resolved (`resolve_redis_url`) before the app starts.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        built = (
            services if services is not None else await asyncio.to_thread(build_services, settings)
        )
        app.state.services = built
        app.state.access = built.access
        stop_recording = asyncio.Event()
        recording = asyncio.create_task(built.recorder.run(stop_recording), name="recorder")
        try:
            # The process that projects also keeps the log: compaction, erasures.
            keepers = _keepers(built.index_side) if built.projector is not None else []
            async with (
                _projecting(app, built.projector, settings, keepers),
                _retaining(built.index_side),
                _trimming(),
            ):
                yield
        finally:
            # Buffered retrieval events are flushed before the event log closes.
            stop_recording.set()
            await recording
            if services is None:
                await built.aclose()

    # CORS outermost (preflights answered, headers on every answer), then telemetry, so
    # requests the memory budget refuses are counted and traced too.
    middleware = [*_cors(settings), Middleware(TelemetryMiddleware)]
    if settings.max_memory_mb > 0:
        middleware.append(
            Middleware(
                MemoryBudgetMiddleware,
                budget=MemoryBudget(settings.max_memory_mb * 1024 * 1024),
                max_body_bytes=settings.max_body_bytes,
            )
        )
    return Starlette(
        routes=[
            *routes(),
            Route("/metrics", metrics.scrape, methods=["GET"]),
            # The browser console and the API reference (app/console/).
            Route("/", console.page, methods=["GET"]),
            Route("/console/config.json", console.config, methods=["GET"]),
            Route("/console/{name}", console.asset, methods=["GET"]),
            Route("/docs", console.docs, methods=["GET"]),
            Route("/docs/{name}", console.docs_asset, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers=_handlers(),
        middleware=middleware,
    )


def _cors(settings: Settings) -> list[Middleware]:
    """CORS only for the origins RAG_CORS_ORIGINS names; without it browsers get no CORS
    headers and so refuse cross-origin calls."""
    origins = settings.cors_origin_list()
    if not origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "traceparent"],
            expose_headers=[
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
            ],
            max_age=600,
        )
    ]


def create_worker_app(settings: Settings, index_side: IndexSide) -> Starlette:
    """`rag-pipeline worker`: the projector, /health and /ready for the probes, and the
    replay endpoints (the worker holds the index)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.index_side = index_side
        # Replays are operator work: the worker checks keys as the API does.
        app.state.access = access = build_access(settings)
        try:
            async with (
                _projecting(app, index_side.projector, settings, _keepers(index_side)),
                _retaining(index_side),
                _trimming(),
            ):
                yield
        finally:
            await access.limiter.close()

    return Starlette(
        routes=[
            Route("/health", system.health, methods=["GET"]),
            Route("/ready", system.ready, methods=["GET"]),
            Route("/metrics", metrics.scrape, methods=["GET"]),
            # The worker holds the index, so replays and compactions run here (the CLI asks).
            *worker_routes(),
        ],
        lifespan=lifespan,
        exception_handlers=_handlers(),
    )


@asynccontextmanager
async def _projecting(
    app: Starlette,
    projector: Projector | None,
    settings: Settings,
    keepers: Sequence[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = (),
) -> AsyncIterator[None]:
    """Run the projector, and what keeps the log beside it, as tasks while the app runs."""
    stop = asyncio.Event()
    task = None
    if projector is not None:
        task = asyncio.create_task(projector.run(stop), name="projector")
    app.state.projector_task = task
    keeping = [asyncio.create_task(keep(stop)) for keep in keepers]
    try:
        yield
    finally:
        stop.set()
        for keeper in keeping:
            # Work under way (a compaction, an erasure's replay) is cancelled when the
            # index side closes; a round of checks ends now, to be done again next start.
            keeper.cancel()
            with contextlib.suppress(BaseException):
                await keeper
        if task is not None:
            await _stop_projector(task, stop, settings.graceful_timeout_seconds)


@asynccontextmanager
async def _retaining(side: IndexSide) -> AsyncIterator[None]:
    """Trim the feedback and dead-letter streams for as long as the app runs (in whichever
    process holds the retention lease at the time: app/services/retention.py)."""
    stop = asyncio.Event()
    task = asyncio.create_task(side.retention.run(stop), name="retention")
    try:
        yield
    finally:
        # A trim cut short is harmless: what it removed is logged already, the rest waits.
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@asynccontextmanager
async def _trimming() -> AsyncIterator[None]:
    """Give back to the OS the heap that bulk work (ingest, replay) freed (app/heap.py)."""
    stop = asyncio.Event()
    task = asyncio.create_task(HeapTrimmer().run(stop), name="heap-trimmer")
    try:
        yield
    finally:
        stop.set()
        await task


def _keepers(side: IndexSide) -> list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]]:
    """What keeps the log, run by the process that projects: automatic compaction, and the
    erasures (whose deletes its projector applies and whose index purge it replays)."""
    return [side.auto_compaction.run, side.eraser.run]


def _handlers() -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    async def on_error(request: Request, exc: Exception) -> Response:
        return response_for(exc)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(
            exc.status_code,
            code,
            str(exc.detail),
            headers=dict(exc.headers) if exc.headers else None,
        )

    return {RagError: on_error, HTTPException: on_http, Exception: on_error}


async def _stop_projector(task: asyncio.Task[None], stop: asyncio.Event, timeout: float) -> None:
    """Let the projector finish its batch; past `timeout`, cancel it, which leaves the batch
    pending for the next start to take over (nothing acknowledged is lost either way)."""
    stop.set()
    try:
        await asyncio.wait_for(task, timeout)
    except TimeoutError:
        log.warning("projector did not finish its batch in %.0f s; left it pending", timeout)
    except Exception:
        log.exception("projector stopped with an error")
