"""Enforces an endpoint's declared scope: each request is admitted (key, scope, rate) first."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from app.api.access import Access, rate_headers
from app.api.codec import response_for
from app.api.keys import Principal

Handler = Callable[[Request], Awaitable[Response]]


def guard(handler: Handler, scope: str) -> Handler:
    """`handler`, run only for callers the keys file gives `scope`; its answers, errors
    included, carry the caller's RateLimit-* headers."""

    async def guarded(request: Request) -> Response:
        access: Access = request.app.state.access
        grant = await access.admit(request.headers.get("authorization"), scope)
        request.state.principal = grant.principal
        try:
            response = await handler(request)
        except Exception as exc:
            response = response_for(exc)
        if grant.rate is not None:
            response.headers.update(rate_headers(grant.rate))
        return response

    guarded.__name__ = handler.__name__
    guarded.__doc__ = handler.__doc__
    return guarded


def tenant_of(request: Request) -> str:
    """The caller's tenant: from its API key, never from anything in the request."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:  # pragma: no cover - an endpoint reading a tenant must name a scope
        raise RuntimeError(f"{request.url.path} reads a tenant but its Endpoint has no scope")
    return principal.tenant


def has_scope(request: Request, scope: str) -> bool:
    """Whether the caller's key also has `scope`, for an endpoint that shows more to it."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal is not None and scope in principal.scopes
