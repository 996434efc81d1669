"""ASGI middleware: a server span per API request, its metrics, and the trace id header."""

from __future__ import annotations

import re
import time

from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.telemetry import metrics, schema, tracing

TRACE_ID_HEADER = "x-trace-id"
# Probes and scrapes are not requests: they would swamp the traces and the request rate the
# autoscaler reads.
_UNMEASURED = frozenset({"/health", "/ready", "/metrics"})
_CONVERTER = re.compile(r":\w+}")  # "{doc_id:path}" -> "{doc_id}" in http.route


class TelemetryMiddleware:
    """Continues an incoming W3C traceparent (or starts a trace), names the span after the
    route template, answers with `x-trace-id`, and counts the request by operation (the route
    handler's name) and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _UNMEASURED:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method: str = scope["method"]
        route, operation = _route_of(scope)
        headers = dict(scope["headers"])
        parent = tracing.context_from_headers(
            _text(headers.get(b"traceparent")), _text(headers.get(b"tracestate"))
        )
        status = 500
        span = tracing.tracer().start_span(
            f"{method} {route}" if route else method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                schema.HTTP_METHOD: method,
                schema.URL_PATH: scope["path"],
                schema.OPERATION: operation,
                **({schema.HTTP_ROUTE: route} if route else {}),
            },
        )
        with tracing.activated(span):
            trace_id = tracing.trace_id_of(span)

            async def send_with_trace_id(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    if trace_id is not None:
                        message["headers"] = [
                            *message.get("headers", []),
                            (TRACE_ID_HEADER.encode(), trace_id.encode()),
                        ]
                await send(message)

            try:
                await self.app(scope, receive, send_with_trace_id)
            finally:
                span.set_attribute(schema.HTTP_STATUS, status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                metrics.observe_request(
                    operation,
                    status,
                    time.perf_counter() - started,
                    trace_id if span.is_recording() else None,
                )


def _route_of(scope: Scope) -> tuple[str | None, str]:
    """The matching route's path template and name (its handler's), as Starlette routes."""
    app = scope.get("app")
    for route in getattr(app, "routes", ()):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            # A route serving several methods names each one's operation (MethodsRoute).
            operations: dict[str, str] = getattr(route, "operations", {})
            method = "GET" if scope["method"] == "HEAD" else scope["method"]
            return _CONVERTER.sub("}", route.path), operations.get(method, route.name)
    return None, "other"


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
