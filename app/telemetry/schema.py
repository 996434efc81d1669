"""The one registry of span names, span attribute keys and metric names the code may use.

observability/telemetry-schema.yaml says the same for operators, generated from this module
(app/telemetry/schema_yaml.py; a test fails while it is stale), and the span-tree tests hold
what the code emits to this registry.
"""

from __future__ import annotations

from typing import Literal

import msgspec

SpanKind = Literal["server", "internal", "client", "consumer"]
MetricType = Literal["counter", "histogram", "gauge"]


class SpanSpec(msgspec.Struct, frozen=True, kw_only=True):
    kind: SpanKind
    doc: str
    attributes: tuple[str, ...] = ()


class MetricSpec(msgspec.Struct, frozen=True, kw_only=True):
    type: MetricType
    doc: str
    labels: tuple[str, ...] = ()


# --- span names ---------------------------------------------------------------------------

HTTP_SERVER = "http.server"  # placeholder key: a server span is named "<METHOD> <route>"
EMBED = "rag.embed"
SEARCH = "rag.search"
FUSION = "rag.fusion"
RERANK = "rag.rerank"
MMR = "rag.mmr"
RECORD = "rag.record"
PROJECT = "rag.project"

# Client spans: the Redis event log and cache, and the in-process Qdrant Edge shard.
REDIS_APPEND = "redis.append"
REDIS_READ = "redis.read"
REDIS_ACK = "redis.ack"
REDIS_CACHE_GET = "redis.cache.get"
REDIS_CACHE_PUT = "redis.cache.put"
REDIS_STATUS = "redis.status"
QDRANT_RETRIEVE = "qdrant.retrieve"
QDRANT_FETCH = "qdrant.fetch"
QDRANT_UPSERT = "qdrant.upsert"
QDRANT_DELETE = "qdrant.delete"

# --- attribute keys -----------------------------------------------------------------------

# Server spans (OpenTelemetry HTTP semantic conventions) plus the metrics' operation label.
HTTP_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
HTTP_STATUS = "http.response.status_code"
URL_PATH = "url.path"
OPERATION = "rag.operation"
# Client spans (database semantic conventions).
DB_SYSTEM = "db.system.name"
DB_OPERATION = "db.operation.name"
# Stage spans.
TENANT = "rag.tenant"
MODEL = "rag.embed.model"
BATCH_SIZE = "rag.embed.batch_size"
CACHE = "rag.embed.cache"  # hit | miss | partial | off (query embeddings are not cached)
CACHE_HITS = "rag.embed.cache_hits"
CACHE_MISSES = "rag.embed.cache_misses"
MODE = "rag.search.mode"
LIMIT = "rag.search.limit"
CANDIDATES = "rag.search.candidates"
FILTERS = "rag.search.filters"
QUERY_TEXT = "rag.query.text"  # only with RAG_TRACE_QUERY_TEXT=true
KEPT = "rag.fusion.kept"
MIN_SCORE = "rag.fusion.min_score"
RERANKER = "rag.rerank.model"
RERANKED = "rag.rerank.candidates"
DIVERSITY = "rag.mmr.diversity"
POOL = "rag.mmr.pool"
STREAM = "rag.stream"
EVENT_ID = "rag.event.id"
RETRIEVAL_ID = "rag.retrieval.id"
DROPPED = "rag.record.dropped"
EVENTS = "rag.project.events"
REDELIVERED = "rag.project.redelivered"
LINKS = "rag.project.links"

_CLIENT = (DB_SYSTEM, DB_OPERATION)

SPANS: dict[str, SpanSpec] = {
    HTTP_SERVER: SpanSpec(
        kind="server",
        doc="One per API request, named '<METHOD> <route>'; continues an incoming traceparent.",
        attributes=(HTTP_METHOD, HTTP_ROUTE, HTTP_STATUS, URL_PATH, OPERATION),
    ),
    EMBED: SpanSpec(
        kind="internal",
        doc="Embedding a query (search) or the chunks of a batch (projector).",
        attributes=(MODEL, BATCH_SIZE, CACHE, CACHE_HITS, CACHE_MISSES),
    ),
    SEARCH: SpanSpec(
        kind="internal",
        doc="Dense and BM25 retrieval from the index.",
        attributes=(TENANT, MODE, LIMIT, CANDIDATES, FILTERS, QUERY_TEXT),
    ),
    FUSION: SpanSpec(
        kind="internal",
        doc="Min-max fusion of the stage scores, then the minimum score.",
        attributes=(MODE, CANDIDATES, KEPT, MIN_SCORE),
    ),
    RERANK: SpanSpec(
        kind="internal",
        doc="Late-interaction rerank of the fused head.",
        attributes=(RERANKER, RERANKED),
    ),
    MMR: SpanSpec(
        kind="internal",
        doc="Maximal marginal relevance selection.",
        attributes=(DIVERSITY, POOL),
    ),
    RECORD: SpanSpec(
        kind="internal",
        doc="The retrieval event, from buffering until it is on the stream (ends at the flush).",
        attributes=(STREAM, RETRIEVAL_ID, EVENT_ID, DROPPED),
    ),
    PROJECT: SpanSpec(
        kind="consumer",
        doc="The projector applying a batch of document events; linked to each event's "
        "ingest request trace.",
        attributes=(STREAM, EVENTS, REDELIVERED, LINKS),
    ),
    REDIS_APPEND: SpanSpec(kind="client", doc="XADD to a stream.", attributes=_CLIENT),
    REDIS_READ: SpanSpec(
        kind="client", doc="XREADGROUP / XAUTOCLAIM / XRANGE on a stream.", attributes=_CLIENT
    ),
    REDIS_ACK: SpanSpec(kind="client", doc="XACK of applied entries.", attributes=_CLIENT),
    REDIS_CACHE_GET: SpanSpec(kind="client", doc="MGET of cached embeddings.", attributes=_CLIENT),
    REDIS_CACHE_PUT: SpanSpec(kind="client", doc="SET of new embeddings.", attributes=_CLIENT),
    REDIS_STATUS: SpanSpec(
        kind="client", doc="Reads and writes of document status records.", attributes=_CLIENT
    ),
    QDRANT_RETRIEVE: SpanSpec(
        kind="client", doc="Dense and BM25 queries of the Edge shard.", attributes=_CLIENT
    ),
    QDRANT_FETCH: SpanSpec(
        kind="client",
        doc="Payloads, vectors or token signatures of points by id.",
        attributes=_CLIENT,
    ),
    QDRANT_UPSERT: SpanSpec(kind="client", doc="Upsert of points (flushed).", attributes=_CLIENT),
    QDRANT_DELETE: SpanSpec(
        kind="client", doc="Delete of a document's points by filter.", attributes=_CLIENT
    ),
}

# --- metrics ------------------------------------------------------------------------------

REQUESTS = "rag_requests_total"
LATENCY = "rag_latency_seconds"
STAGE_LATENCY = "rag_stage_latency_seconds"
QUEUE_SIZE = "rag_embedding_queue_size"
CACHE_HITS_TOTAL = "rag_embedding_cache_hits_total"
CACHE_MISSES_TOTAL = "rag_embedding_cache_misses_total"
EVENTS_APPENDED = "rag_events_appended_total"
EVENTS_DROPPED = "rag_events_dropped_total"
DEAD_LETTERS = "rag_projector_dead_letters_total"
DEAD_LETTERS_WAITING = "rag_dead_letters"
INDEX_POINTS = "rag_index_points"
STREAM_ENTRIES = "rag_stream_entries"
STREAM_MEMORY = "rag_stream_memory_bytes"
STREAM_TRIMMED = "rag_stream_trimmed_total"
REDIS_MEMORY_USED = "rag_redis_memory_used_bytes"
REDIS_MAXMEMORY = "rag_redis_maxmemory_bytes"

# 1 ms to 10 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

METRICS: dict[str, MetricSpec] = {
    REQUESTS: MetricSpec(
        type="counter",
        doc="API requests by operation (route handler) and HTTP status code.",
        labels=("operation", "status"),
    ),
    LATENCY: MetricSpec(
        type="histogram",
        doc="API request latency, until the response is sent.",
        labels=("operation",),
    ),
    STAGE_LATENCY: MetricSpec(
        type="histogram",
        doc="Latency of a search stage (embed, search, fusion, rerank, mmr) or projector batch "
        "(project).",
        labels=("stage",),
    ),
    QUEUE_SIZE: MetricSpec(
        type="gauge",
        doc="Document events waiting for the indexer group: pending (delivered, not "
        "acknowledged) and lag (not yet delivered).",
        labels=("state",),
    ),
    CACHE_HITS_TOTAL: MetricSpec(type="counter", doc="Embedding cache lookups that hit."),
    CACHE_MISSES_TOTAL: MetricSpec(
        type="counter", doc="Embedding cache lookups that missed (or found the cache away)."
    ),
    EVENTS_APPENDED: MetricSpec(
        type="counter", doc="Events appended to a stream.", labels=("stream",)
    ),
    EVENTS_DROPPED: MetricSpec(
        type="counter", doc="Retrieval events dropped because the recorder's buffer was full."
    ),
    DEAD_LETTERS: MetricSpec(
        type="counter", doc="Document events the projector moved to the dead-letter stream."
    ),
    DEAD_LETTERS_WAITING: MetricSpec(
        type="gauge",
        doc="Entries in the dead-letter stream now, all tenants: events the projector gave up "
        "on that nobody has requeued or dropped yet (XLEN, read at scrape).",
    ),
    INDEX_POINTS: MetricSpec(type="gauge", doc="Points (chunks) in the index, all tenants."),
    STREAM_ENTRIES: MetricSpec(
        type="gauge",
        doc="Entries in each event stream now, all tenants (XLEN, read at scrape).",
        labels=("stream",),
    ),
    STREAM_MEMORY: MetricSpec(
        type="gauge",
        doc="Bytes each event stream takes in Redis (MEMORY USAGE, every node counted); sampled "
        "at most once a minute per process, less often for a stream whose count takes long.",
        labels=("stream",),
    ),
    STREAM_TRIMMED: MetricSpec(
        type="counter",
        doc="Entries removed from a stream by retention, by the bound that removed them "
        "(reason: age or length); counted by the process that trimmed.",
        labels=("stream", "reason"),
    ),
    REDIS_MEMORY_USED: MetricSpec(
        type="gauge",
        doc="Memory the Redis holding the streams uses, every key counted (INFO used_memory, "
        "read at scrape).",
    ),
    REDIS_MAXMEMORY: MetricSpec(
        type="gauge",
        doc="That Redis's memory limit (INFO maxmemory); 0 when it has none.",
    ),
}

# Stage labels of rag_stage_latency_seconds, each the span of the same name with "rag.".
STAGES = ("embed", "search", "fusion", "rerank", "mmr", "project")
