"""create_app(settings): the Starlette application, its routes and the lifespan of its adapters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from app.api.codec import error_response, response_for
from app.api.routes import routes
from app.errors import RagError
from app.settings import Settings
from app.wiring import Services, build_services


def create_app(settings: Settings, services: Services | None = None) -> Starlette:
    """The app; given `services`, it uses them and leaves closing them to the caller."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        owned = services is None
        app.state.services = (
            await asyncio.to_thread(build_services, settings) if owned else services
        )
        try:
            yield
        finally:
            if owned:
                app.state.services.close()

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

    return Starlette(
        routes=routes(),
        lifespan=lifespan,
        exception_handlers={RagError: on_error, HTTPException: on_http, Exception: on_error},
    )
