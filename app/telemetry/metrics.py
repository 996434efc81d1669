"""The Prometheus metrics of the registry (`schema.METRICS`), how the code moves them, and
their exposition: OpenMetrics (with trace-id exemplars) when the scraper asks for it."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from app.telemetry import schema


def _spec(name: str, type_: str) -> schema.MetricSpec:
    spec = schema.METRICS[name]
    if spec.type != type_:
        raise ValueError(f"{name} is a {spec.type} in app.telemetry.schema, not a {type_}")
    return spec


# Made as the registry says, in the default registry: it carries the process_* and python_*
# collectors too. One Hypercorn worker per process, so no multiprocess mode is needed.
def _counter(name: str) -> Counter:
    spec = _spec(name, "counter")
    return Counter(name, spec.doc, spec.labels)


def _histogram(name: str) -> Histogram:
    spec = _spec(name, "histogram")
    return Histogram(name, spec.doc, spec.labels, buckets=schema.LATENCY_BUCKETS)


def _gauge(name: str) -> Gauge:
    spec = _spec(name, "gauge")
    return Gauge(name, spec.doc, spec.labels)


_requests = _counter(schema.REQUESTS)
_latency = _histogram(schema.LATENCY)
_stage_latency = _histogram(schema.STAGE_LATENCY)
_queue = _gauge(schema.QUEUE_SIZE)
_cache_hits = _counter(schema.CACHE_HITS_TOTAL)
_cache_misses = _counter(schema.CACHE_MISSES_TOTAL)
_appended = _counter(schema.EVENTS_APPENDED)
_dropped = _counter(schema.EVENTS_DROPPED)
_dead_letters = _counter(schema.DEAD_LETTERS)
# Set from XLEN at every scrape (app/api/metrics.py), the stream being shared by every
# process; moved in between by what this process adds or removes, so it is current here
# even when a scrape cannot reach Redis.
_dead_letters_waiting = _gauge(schema.DEAD_LETTERS_WAITING)
_index_points = _gauge(schema.INDEX_POINTS)
_stream_entries = _gauge(schema.STREAM_ENTRIES)
_stream_memory = _gauge(schema.STREAM_MEMORY)
_stream_trimmed = _counter(schema.STREAM_TRIMMED)
_redis_memory_used = _gauge(schema.REDIS_MEMORY_USED)
_redis_maxmemory = _gauge(schema.REDIS_MAXMEMORY)

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


def stream_trimmed(stream: str, reason: str, count: int) -> None:
    """Entries retention removed from `stream` (reason: age or length)."""
    if _enabled and count:
        _child(_stream_trimmed, stream, reason).inc(count)


def declare_trimmed(stream: str) -> None:
    """Export `stream`'s trim counters at 0 before anything is trimmed (an increase() over
    them then has a series from the start)."""
    for reason in ("age", "length"):
        _child(_stream_trimmed, stream, reason)


def set_stream(stream: str, entries: int, memory_bytes: int | None) -> None:
    """A stream's length and, when sampled, its memory (None: no sample yet)."""
    _stream_entries.labels(stream).set(entries)
    if memory_bytes is not None:
        _stream_memory.labels(stream).set(memory_bytes)


def set_redis_memory(used_bytes: int, max_bytes: int) -> None:
    _redis_memory_used.set(used_bytes)
    _redis_maxmemory.set(max_bytes)


def exposition(accept: str) -> tuple[bytes, str]:
    """The body and content type for a scrape with this Accept header."""
    encoder, content_type = choose_encoder(accept)
    return encoder(REGISTRY), content_type
