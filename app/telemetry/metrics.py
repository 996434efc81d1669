"""The Prometheus metrics of the registry (`schema.METRICS`), how the code moves them, and
their exposition: OpenMetrics (with trace-id exemplars) when the scraper asks for it."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from app.telemetry import schema

# The default registry: it carries the process_* and python_* collectors too. One Hypercorn
# worker per process, so no multiprocess mode is needed.
_requests = Counter(
    schema.REQUESTS, schema.METRICS[schema.REQUESTS].doc, schema.METRICS[schema.REQUESTS].labels
)
_latency = Histogram(
    schema.LATENCY,
    schema.METRICS[schema.LATENCY].doc,
    schema.METRICS[schema.LATENCY].labels,
    buckets=schema.LATENCY_BUCKETS,
)
_stage_latency = Histogram(
    schema.STAGE_LATENCY,
    schema.METRICS[schema.STAGE_LATENCY].doc,
    schema.METRICS[schema.STAGE_LATENCY].labels,
    buckets=schema.LATENCY_BUCKETS,
)
_queue = Gauge(
    schema.QUEUE_SIZE,
    schema.METRICS[schema.QUEUE_SIZE].doc,
    schema.METRICS[schema.QUEUE_SIZE].labels,
)
_cache_hits = Counter(schema.CACHE_HITS_TOTAL, schema.METRICS[schema.CACHE_HITS_TOTAL].doc)
_cache_misses = Counter(schema.CACHE_MISSES_TOTAL, schema.METRICS[schema.CACHE_MISSES_TOTAL].doc)
_appended = Counter(
    schema.EVENTS_APPENDED,
    schema.METRICS[schema.EVENTS_APPENDED].doc,
    schema.METRICS[schema.EVENTS_APPENDED].labels,
)
_dropped = Counter(schema.EVENTS_DROPPED, schema.METRICS[schema.EVENTS_DROPPED].doc)
_dead_letters = Counter(schema.DEAD_LETTERS, schema.METRICS[schema.DEAD_LETTERS].doc)
# Set from XLEN at every scrape (app/api/metrics.py), the stream being shared by every
# process; moved in between by what this process adds or removes, so it is current here
# even when a scrape cannot reach Redis.
_dead_letters_waiting = Gauge(
    schema.DEAD_LETTERS_WAITING, schema.METRICS[schema.DEAD_LETTERS_WAITING].doc
)
_index_points = Gauge(schema.INDEX_POINTS, schema.METRICS[schema.INDEX_POINTS].doc)

# Label-less counters and the gauges' label sets are exported from the first scrape on, at
# 0, so a rate() or an alert over them has a series before the first event.
for _state in ("pending", "lag"):
    _queue.labels(_state)

_enabled = True
# Label children by label values: .labels() validates and locks on every call, a measurable
# part of what a metric costs on the search path.
_children: dict[tuple[object, ...], Any] = {}


def _child(metric: Any, *values: str) -> Any:
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def configure(enabled: bool) -> None:
    """`RAG_METRICS`: whether the code moves the metrics (the exposition always answers)."""
    global _enabled
    _enabled = enabled


def _exemplar(trace_id: str | None) -> dict[str, str] | None:
    return None if trace_id is None else {"trace_id": trace_id}


def observe_request(operation: str, status: int, seconds: float, trace_id: str | None) -> None:
    if not _enabled:
        return
    exemplar = _exemplar(trace_id)
    _child(_requests, operation, str(status)).inc(exemplar=exemplar)
    _child(_latency, operation).observe(seconds, exemplar=exemplar)


def observe_stage(stage: str, seconds: float, trace_id: str | None) -> None:
    if _enabled:
        _child(_stage_latency, stage).observe(seconds, exemplar=_exemplar(trace_id))


def cache_lookups(hits: int, misses: int) -> None:
    if _enabled:
        if hits:
            _cache_hits.inc(hits)
        if misses:
            _cache_misses.inc(misses)


def events_appended(stream: str, count: int) -> None:
    if _enabled and count:
        _child(_appended, stream).inc(count)


def event_dropped() -> None:
    if _enabled:
        _dropped.inc()


def dead_lettered(count: int) -> None:
    if _enabled and count:
        _dead_letters.inc(count)
        _dead_letters_waiting.inc(count)


def dead_letters_removed(count: int) -> None:
    """Dead letters requeued or dropped by this process."""
    if _enabled and count:
        _dead_letters_waiting.dec(count)


def set_dead_letters(count: int) -> None:
    _dead_letters_waiting.set(count)


def set_queue(pending: int, lag: int) -> None:
    _queue.labels("pending").set(pending)
    _queue.labels("lag").set(lag)


def set_index_points(points: int) -> None:
    _index_points.set(points)


def exposition(accept: str) -> tuple[bytes, str]:
    """The body and content type for a scrape with this Accept header."""
    encoder, content_type = choose_encoder(accept)
    return encoder(REGISTRY), content_type
