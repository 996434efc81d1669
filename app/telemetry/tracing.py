"""The tracer provider, configured from Settings, and the span helpers the code uses."""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from app import __version__
from app.settings import Settings
from app.telemetry import metrics, schema

P = ParamSpec("P")
R = TypeVar("R")

# No-op until `use` is given a provider: spans cost next to nothing with tracing off.
_tracer: trace.Tracer = trace.NoOpTracer()
# W3C trace context only: what the events carry and what callers send.
_propagator = TraceContextTextMapPropagator()


def sampler_for(settings: Settings) -> Sampler:
    ratio = TraceIdRatioBased(settings.otel_traces_sampler_arg)
    return {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(ratio),
    }[settings.otel_traces_sampler]


def resource_for(settings: Settings) -> Resource:
    # Built by hand, not Resource.create(): that one reads OTEL_* from the environment.
    attributes: dict[str, AttributeValue] = dict(settings.resource_attributes())
    attributes.update(
        {
            # OTEL_SERVICE_NAME wins over a service.name in OTEL_RESOURCE_ATTRIBUTES (spec).
            "service.name": settings.otel_service_name,
            "service.version": __version__,
            "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
            "telemetry.sdk.language": "python",
            "telemetry.sdk.name": "opentelemetry",
        }
    )
    return Resource(attributes)


def exporter_for(settings: Settings) -> SpanExporter | None:
    """The OTLP exporter the settings name; None when no endpoint is set."""
    endpoint = settings.otel_exporter_otlp_endpoint
    if not endpoint:
        return None
    if settings.otel_exporter_otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    # OTEL_EXPORTER_OTLP_ENDPOINT is the base URL; the signal's path is appended (spec).
    return HttpExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")


def build_provider(
    settings: Settings, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """A provider with a batch processor to `exporter` (default: the settings' OTLP one);
    None when OTEL_SDK_DISABLED is true."""
    if settings.otel_sdk_disabled:
        return None
    provider = TracerProvider(sampler=sampler_for(settings), resource=resource_for(settings))
    exporter = exporter if exporter is not None else exporter_for(settings)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def install(settings: Settings) -> TracerProvider | None:
    """Build the provider and make it the process's; the caller shuts it down on exit
    (which flushes the spans still batched)."""
    metrics.configure(settings.metrics)
    provider = build_provider(settings)
    use(provider)
    if provider is not None:
        trace.set_tracer_provider(provider)  # for any library that traces itself
    return provider


def use(provider: TracerProvider | None) -> None:
    """Make the code's spans with `provider` (None: no spans). Held here rather than read
    from OpenTelemetry's global, which can be set only once a process: tests swap it."""
    global _tracer
    _tracer = (
        trace.NoOpTracer() if provider is None else provider.get_tracer("rag-pipeline", __version__)
    )


# --- span helpers -------------------------------------------------------------------------


def tracer() -> trace.Tracer:
    return _tracer


def trace_id_of(span: Span) -> str | None:
    span_context = span.get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def current_trace_id() -> str | None:
    """The current trace's id (32 hex digits), also when it is not sampled; None untraced."""
    return trace_id_of(trace.get_current_span())


def current_traceparent() -> str | None:
    """The current span as a W3C traceparent, for an event to carry; None untraced."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def context_from_headers(traceparent: str | None, tracestate: str | None) -> Context:
    carrier = {"traceparent": traceparent or ""}
    if tracestate:
        carrier["tracestate"] = tracestate
    return _propagator.extract(carrier) if traceparent else Context()


def span_context_of(traceparent: str | None) -> SpanContext | None:
    """The remote span a traceparent names; None if it names none."""
    if not traceparent:
        return None
    remote = trace.get_current_span(_propagator.extract({"traceparent": traceparent}))
    span_context = remote.get_span_context()
    return span_context if span_context.is_valid else None


def links_to(traceparents: Sequence[tuple[str | None, str]]) -> list[Link]:
    """Links to the spans that caused these events: (traceparent, event id) pairs."""
    links = []
    for traceparent, event_id in traceparents:
        span_context = span_context_of(traceparent)
        if span_context is not None:
            links.append(Link(span_context, {schema.EVENT_ID: event_id}))
    return links


@contextmanager
def stage(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    links: Sequence[Link] = (),
    attributes: dict[str, AttributeValue] | None = None,
) -> Iterator[Span]:
    """A stage's span `rag.<name>` (current while it runs), timed into rag_stage_latency_seconds."""
    started = time.perf_counter()
    span = _tracer.start_span(f"rag.{name}", kind=kind, links=links, attributes=attributes)
    exemplar = trace_id_of(span) if span.is_recording() else None
    try:
        with activated(span):
            yield span
    finally:
        metrics.observe_stage(name, time.perf_counter() - started, exemplar)


@contextmanager
def activated(span: Span) -> Iterator[None]:
    """`span` current while the block runs; ended after, with the error if one escaped.
    What start_as_current_span does, by hand: its two nested context managers cost a
    measurable share of a span on the search path (bench/telemetry_overhead.py)."""
    token = context.attach(trace.set_span_in_context(span))
    try:
        yield
    except BaseException as exc:
        if span.is_recording():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        context.detach(token)
        span.end()


def client_span(
    name: str, system: str, operation: str
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Wrap an adapter's coroutine in a CLIENT span `name`, but only inside a recorded
    trace: the projector's idle polling would otherwise make a root span a second."""
    if name not in schema.SPANS:
        raise ValueError(f"span {name!r} is not in app.telemetry.schema")
    attributes: dict[str, AttributeValue] = {
        schema.DB_SYSTEM: system,
        schema.DB_OPERATION: operation,
    }

    def wrap(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(fn)
        async def traced(*args: P.args, **kwargs: P.kwargs) -> R:
            if not trace.get_current_span().is_recording():
                return await fn(*args, **kwargs)
            with activated(_tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)):
                return await fn(*args, **kwargs)

        return traced

    return wrap
