"""Wire structs of the HTTP API: what requests may hold and what responses promise."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from app.domain.doc_status import Outcome
from app.domain.records import SearchMode
from app.services.documents import CURSOR_PATTERN
from app.services.erasure import Erasure

DocId = Annotated[str, Meta(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f]+$")]
# Somewhere a character that is not whitespace, so the published schema rejects what the
# server does (str.strip). Spelled out: `\S` differs between Python (which counts \x1c-\x1f
# as whitespace) and the ECMA regexes JSON Schema uses (which count \ufeff).
NOT_ONLY_WHITESPACE = (
    r"[^\t\n\u000b\f\r \u001c-\u001f\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
)
Query = Annotated[str, Meta(min_length=1, max_length=4096, pattern=NOT_ONLY_WHITESPACE)]
TopK = Annotated[int, Meta(ge=1, le=100)]
Score = Annotated[float, Meta(ge=-1.0, le=1.0)]
Diversity = Annotated[float, Meta(ge=0.0, le=1.0)]
# Dots separate the parts of a nested field's path; none may be empty ("a..b", "a.").
MetadataKey = Annotated[
    str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
]
Scalar = str | int | float | bool
# What the index matches integers as.
Int64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    pass


# The OpenAPI document's components (app/api/openapi.py), for a schema written here that
# names a struct: msgspec fills in the refs of the types it walks, not of hand-written ones.
REF_TEMPLATE = "#/components/schemas/{name}"

# Metadata is stored in the index payload and filtered on by key; nothing needs deep trees,
# and a deep one costs every reader (index, events, responses) recursion.
MAX_METADATA_DEPTH = 4


def _json_value(depth: int) -> dict[str, Any]:
    """JSON Schema of a JSON value whose arrays and objects nest at most `depth` deep."""
    scalar: dict[str, Any] = {"type": ["string", "number", "boolean", "null"]}
    if depth == 0:
        return scalar
    inner = _json_value(depth - 1)
    return {
        "anyOf": [
            scalar,
            {"type": "array", "items": inner},
            {"type": "object", "additionalProperties": inner},
        ]
    }


# A metadata value: any JSON, which msgspec can only publish as `{}`; the depth limit the
# handler checks (app/api/documents.py) is spelled out by hand.
MetadataValue = Annotated[Any, Meta(extra_json_schema=_json_value(MAX_METADATA_DEPTH))]


class DocumentInput(_Strict):
    """A document to index. `id` is yours; re-sending the same id replaces the document."""

    id: DocId
    text: Annotated[str, Meta(min_length=1, max_length=1_000_000, pattern=NOT_ONLY_WHITESPACE)]
    title: Annotated[str, Meta(max_length=1024)] = ""
    metadata: dict[MetadataKey, MetadataValue] = msgspec.field(default_factory=dict)


class IngestRequest(_Strict):
    """Documents to index, with optional chunking (sizes in embedder tokens). An id that
    appears more than once: the last one wins, the earlier ones answer `superseded`."""

    documents: Annotated[list[DocumentInput], Meta(min_length=1)]
    chunk_size: Annotated[int, Meta(ge=16, le=256)] | None = None
    chunk_overlap: Annotated[int, Meta(ge=0, le=128)] | None = None


class IngestedDocument(msgspec.Struct, kw_only=True, omit_defaults=True):
    doc_id: str
    version: str
    # The document-stream entry carrying this version (for unchanged: the one that indexed
    # it); absent for documents indexed before the event log existed, and for one a later
    # document with the same id in the same request superseded (nothing was appended for it).
    event_id: str | None = None
    status: Outcome
    chunks: int | None = None  # known once indexed
    error: str | None = None


class IngestResponse(msgspec.Struct, kw_only=True):
    """200 when no document is pending, else 202 (the events are in the stream)."""

    documents: list[IngestedDocument]


# What `any` holds: strings or integers, 1 to 256 of them.
ConditionText = Annotated[str, Meta(max_length=1024)]
_VALUES = Meta(min_length=1, max_length=256)
_BOUNDS = ("gte", "gt", "lte", "lt")


class Condition(_Strict):
    """A metadata condition: `any` of a list of values, or a numeric range."""

    # Rules across fields, which msgspec's schema (one field at a time) cannot say; merged
    # into the OpenAPI component (app/api/openapi.py), so clients and fuzzers see what the
    # handler checks. `any` holds strings or integers, not a mix (one list type each: a
    # msgspec union holds one array type at most); a condition is `any` or a range, never
    # both or neither.
    schema_rules: ClassVar[dict[str, Any]] = {
        "oneOf": [
            {
                "required": ["any"],
                "properties": {
                    "any": {
                        "oneOf": [
                            msgspec.json.schema(Annotated[list[ConditionText], _VALUES]),
                            msgspec.json.schema(Annotated[list[Int64], _VALUES]),
                        ]
                    },
                    **{bound: {"type": "null"} for bound in _BOUNDS},
                },
            },
            {
                "properties": {"any": {"type": "null"}},
                "anyOf": [
                    {"required": [bound], "properties": {bound: {"type": "number"}}}
                    for bound in _BOUNDS
                ],
            },
        ]
    }

    any: Annotated[list[ConditionText | Int64], _VALUES] | None = None
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None


# A filter's value: matched exactly, or a Condition. Kept raw in SearchRequest (each value
# is decoded on its own, so an error can name its key), so its schema is given by hand,
# generated from the type the handler decodes it to.
FilterValue = Scalar | Condition
(_FILTER_VALUE_SCHEMA,), _ = msgspec.json.schema_components(
    [FilterValue], ref_template=REF_TEMPLATE
)
RawFilterValue = Annotated[msgspec.Raw, Meta(extra_json_schema=_FILTER_VALUE_SCHEMA)]


class SearchRequest(_Strict):
    """A search. `filters` maps metadata fields to a value (exact match) or a Condition."""

    query: Query
    top_k: TopK | None = None
    mode: SearchMode = "hybrid"
    filters: Annotated[dict[MetadataKey, RawFilterValue], Meta(max_length=32)] | None = None
    # Minimum cosine similarity between the query and chunk embeddings (-1..1), in every
    # mode: an absolute relevance floor, unlike `score`, which ranks within one response.
    min_score: Score | None = None
    # MMR trade-off: 0 = pure relevance (off), 1 = pure novelty.
    diversity: Diversity = 0.0
    rerank: bool | None = None


class SearchResult(msgspec.Struct, kw_only=True):
    doc_id: str
    chunk_id: str
    chunk_index: int
    # Fused rank score in [0, 1], relative to this response's candidates.
    score: float
    title: str
    text: str
    section: list[str]
    metadata: dict[str, Any]
    # Per stage: dense (cosine), bm25 (raw BM25, 0 when no query term matched), fusion,
    # rerank (late-interaction MaxSim, mean cosine), mmr (0-based pick order when diversifying).
    scores: dict[str, float]


class SearchResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    results: list[SearchResult]
    retrieval_id: str
    mode: SearchMode
    reranked: bool
    timings_ms: dict[str, float]
    # Set when a rerank was asked for (or is the default) and could not run: an index built
    # by an API embedder has no token vectors for late interaction.
    rerank_skipped: str | None = None
    # The search's trace (32 hex digits), also in the x-trace-id header; null when tracing
    # is off. Find it in Jaeger by this id (observability/README.md).
    trace_id: str | None = None


# A search request body: up to RAG_MAX_BATCH_SEARCHES searches (this is that setting's
# ceiling; the served /openapi.json states the setting's value).
MAX_BATCH_SEARCHES = 100


class BatchSearchRequest(_Strict):
    """Several searches in one request: their queries are embedded together, and each is
    answered, and recorded, as POST /api/v1/search would answer it alone."""

    searches: Annotated[list[SearchRequest], Meta(min_length=1, max_length=MAX_BATCH_SEARCHES)]


class BatchSearchResponse(msgspec.Struct, kw_only=True):
    """One response per search, in the request's order, each with its own retrieval_id
    (they share the request's trace_id). Each one's `timings_ms.embed` is the whole batch's."""

    responses: list[SearchResponse]


class DocumentChunk(msgspec.Struct, kw_only=True):
    """A chunk as the index holds it (no vectors)."""

    chunk_id: str
    chunk_index: int
    version: str  # the document version it belongs to
    # The document event whose application wrote it ("" before events had ids): while a new
    # version replaces an old one, both versions' chunks are there for a moment.
    event_id: str
    section: list[str]  # the Markdown heading path it sits under
    text: str  # its own text, as search results show it
    embed_text: str  # what the embedder and BM25 read: title, section path and text


class DocumentStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """pending: a change is in the stream, not yet applied (`version` null when it is a
    delete); indexed; deleted; failed: the newest change was dead-lettered (see `error`).

    `title`, `metadata` and `accepted_at` are those of `version` (while pending, the version
    waiting), absent for a deleted document. `text` (with ?include=text) is that version's
    text as ingested, absent when its event is no longer in the stream (documents indexed
    before the event log existed). `chunks_indexed` (with ?include=chunks) is what the
    index holds for the document now, oldest event first, then by position: while a change
    is pending, the previous version's chunks."""

    doc_id: str
    status: Literal["pending", "indexed", "deleted", "failed"]
    version: str | None = None
    chunks: int | None = None  # points in the index, when indexed
    event_id: str | None = None  # the newest change's entry in the document stream
    error: str | None = None
    title: str | None = None
    metadata: dict[str, Any] | None = None
    accepted_at: float | None = None  # epoch seconds
    text: str | None = None
    chunks_indexed: list[DocumentChunk] | None = None


class DocumentQuery(_Strict):
    """GET /api/v1/documents/{doc_id} query parameters."""

    include: (
        Annotated[
            str,
            Meta(
                pattern=r"^(text|chunks)(,(text|chunks))*$",
                description="What to add: `text`, `chunks` or both, comma-separated",
            ),
        ]
        | None
    ) = None


class DocumentListQuery(_Strict):
    """GET /api/v1/documents query parameters: up to `limit` documents, only those with
    `status` if given, from where `cursor` (the previous page's `next`) left off."""

    status: Literal["pending", "indexed", "deleted", "failed"] | None = None
    limit: Annotated[int, Meta(ge=1, le=100)] = 20
    cursor: (
        Annotated[
            str,
            Meta(
                pattern=CURSOR_PATTERN,
                description="The previous page's `next`, as it was; absent for the first page",
            ),
        ]
        | None
    ) = None


class DocumentList(msgspec.Struct, kw_only=True):
    """One page of a tenant's documents (their status, as GET /api/v1/documents/{id} without
    title or metadata), in no meaningful order: the order of the tenant's status hash, by id
    within each step of its scan. `next` null: the scan is complete; else pass it as
    `cursor`. Fewer than `limit` with a `next` means the page stopped at its bound (a status
    filter that matches few). A document present for the whole scan is listed at least
    once; one added or removed meanwhile may or may not be, and one may come twice.
    Documents indexed before the event log existed are not listed."""

    documents: list[DocumentStatus]
    next: str | None


class DeleteResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    """202 with status pending, or (with ?wait=true, once applied) 200 with status deleted.
    With ?erase=true, always 202, with the erasure request to follow at
    /api/v1/erasures/{erasure_id} (also in the Location header)."""

    doc_id: str
    event_id: str
    status: Outcome
    error: str | None = None
    erasure: Erasure | None = None


class DeleteQuery(msgspec.Struct, kw_only=True):
    """Query parameters of DELETE /api/v1/documents/{doc_id} besides `wait`."""

    # Erase rather than delete: every stored trace of the document's text and metadata
    # goes (admin scope; see Erasure).
    erase: bool = False


class IndexInfo(msgspec.Struct, kw_only=True):
    model_id: str
    dim: int
    documents: int
    chunks: int
    indexed_vectors: int
    segments: int


class EventsInfo(msgspec.Struct, kw_only=True):
    documents_stream: int  # entries in the document stream
    indexer_pending: int  # delivered to a projector, not yet acknowledged
    indexer_lag: int | None  # not yet delivered; null when the server cannot tell
    dead_letters: int  # entries in the dead-letter stream
    retrievals_stream: int  # entries in the retrieval stream (trimmed by age)
    feedback_stream: int  # entries in the feedback stream
    indexer_consumers: int  # consumers in the indexer group (dead ones are removed in time)


class CacheInfo(msgspec.Struct, kw_only=True):
    """This process's embedding-cache counters since it started."""

    hits: int
    misses: int
    writes: int
    errors: int
    hit_rate: float | None  # hits / (hits + misses); null before the first lookup


class RecorderInfo(msgspec.Struct, kw_only=True):
    """This process's retrieval recorder since it started."""

    appended: int  # retrieval events written to the stream
    buffered: int  # waiting to be written
    dropped: int  # lost because the buffer was full (the log slow or away)


class StreamStorage(msgspec.Struct, kw_only=True):
    entries: int
    memory_bytes: int | None  # MEMORY USAGE; null until this process first sampled it
    memory_sampled_at: float | None  # epoch seconds of that sample (taken at most once a minute)


class StorageInfo(msgspec.Struct, kw_only=True):
    """Deployment-wide, so only for keys with the `operator` scope: each stream's size and
    the memory of the Redis holding them (every key counted, the embedding cache too)."""

    streams: dict[str, StreamStorage]  # by stream key, e.g. "rag:documents"
    redis_used_bytes: int
    redis_max_bytes: int  # maxmemory; 0: no limit
    redis_used_ratio: float | None  # used / max; null without a limit
    redis_maxmemory_policy: str


class Stats(msgspec.Struct, kw_only=True):
    index: IndexInfo
    events: EventsInfo
    cache: CacheInfo
    recorder: RecorderInfo
    storage: StorageInfo | None = None  # null unless the key has the `operator` scope


class QualityQuery(_Strict):
    """GET /api/v1/quality query parameters: the last `hours` hours, precision at `k`."""

    hours: Annotated[int, Meta(ge=1, le=168)] = 24
    k: Annotated[int, Meta(ge=1, le=100)] = 10


class Health(msgspec.Struct, kw_only=True):
    status: Literal["ok"]


class Readiness(msgspec.Struct, kw_only=True):
    ready: bool
    checks: dict[str, bool]


class FeedbackRequest(_Strict):
    """A judgement of one result of a recorded retrieval: name the document or the chunk."""

    # Exactly one of doc_id and chunk_id: a rule across fields (see Condition.schema_rules).
    schema_rules: ClassVar[dict[str, Any]] = {
        "oneOf": [
            {
                "required": [named],
                "properties": {named: {"type": "string"}, other: {"type": "null"}},
            }
            for named, other in (("doc_id", "chunk_id"), ("chunk_id", "doc_id"))
        ]
    }

    retrieval_id: Annotated[str, Meta(min_length=1, max_length=64)]
    # Graded like BEIR qrels: 0 = not relevant, 1 = relevant, 2 = highly relevant.
    relevance: Annotated[int, Meta(ge=0, le=2)]
    doc_id: DocId | None = None
    chunk_id: Annotated[str, Meta(min_length=1, max_length=64)] | None = None


class FeedbackAccepted(msgspec.Struct, kw_only=True):
    retrieval_id: str
    event_id: str


class ErrorDetail(msgspec.Struct, kw_only=True, omit_defaults=True):
    code: str
    message: str
    field: str | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    error: ErrorDetail


class ReindexJob(msgspec.Struct, kw_only=True):
    """A replay (POST /api/v1/reindex) and how far it got. phase: reading (the stream),
    rebuilding (the new generation), catching_up (with what was appended since), swapping
    (the projector paused), then done (the new generation serves) or failed (the old one
    still does; see `error`)."""

    job_id: str
    phase: Literal["reading", "rebuilding", "catching_up", "swapping", "done", "failed"]
    generation: str | None  # the index generation being built, then active
    entries: int  # stream entries read
    documents: int  # documents the rebuild applies (each one's newest entry)
    applied: int  # of those, applied so far
    caught_up: int  # entries applied after the rebuild pass
    chunks: int  # chunks written to the new generation
    failed: int  # entries that could not be applied
    seconds: float
    started_at: float
    finished_at: float | None = None
    error: str | None = None


class CompactionJob(msgspec.Struct, kw_only=True):
    """A compaction of the document stream (POST /api/v1/compact) and how far it got. phase:
    reading (each document's newest entry), rewriting (copying what is kept beside the
    stream, then switching the two in one step), then done or failed (the stream is then as
    it was; see `error`)."""

    job_id: str
    phase: Literal["reading", "rewriting", "done", "failed"]
    entries_before: int  # entries in the stream when it began
    documents: int  # documents with an entry, deleted ones included
    read: int  # entries the rewrite read (appends during it included)
    kept: int
    superseded: int  # dropped: a later entry for the same document exists
    tombstones: int  # dropped: acknowledged deletes past RAG_TOMBSTONE_RETENTION_HOURS
    pending_carried: int  # pending entries carried over to their consumers
    entries_after: int
    seconds: float
    started_at: float
    finished_at: float | None = None
    error: str | None = None


# A dead letter's id: an entry id of the dead-letter stream, "<ms>-<seq>". At most 19 digits
# a part, so every id the schema admits is one Redis accepts (its parts are u64s).
DeadLetterId = Annotated[str, Meta(pattern=r"^[0-9]{1,19}-[0-9]{1,19}$")]


class DeadLetterQuery(_Strict):
    """GET /api/v1/dead-letters query parameters: up to `limit` dead letters, `newest` or
    `oldest` first, starting just past `after` (the previous page's `next`)."""

    limit: Annotated[int, Meta(ge=1, le=100)] = 20
    order: Literal["newest", "oldest"] = "newest"
    after: DeadLetterId | None = None


class DeadLetterSummary(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A document event the projector gave up on, waiting in the dead-letter stream to be
    requeued or dropped. `requeueable` false says why in `problem`."""

    id: str  # the dead letter (an entry of the dead-letter stream)
    doc_id: str | None = None  # null when the event cannot be read
    event_type: str | None = None  # DocumentUpserted or DocumentDeleted, when it can be read
    version: str | None = None  # an upsert's content version
    source_id: str  # the event's entry in the document stream
    error: str  # why the projector gave up
    deliveries: int
    dead_lettered_at: float  # epoch seconds
    requeueable: bool
    problem: str | None = None  # why it cannot be requeued


class DeadLetterList(msgspec.Struct, kw_only=True):
    """One page. Fewer than `limit` with a `next` means the read stopped at its bound: ask
    again with `after` = `next`; `next` null means there is no more."""

    dead_letters: list[DeadLetterSummary]
    next: str | None


class DeadLetterDetail(DeadLetterSummary, kw_only=True, omit_defaults=True):
    """A dead letter with the event as it was stored (JSON) and its document's status now."""

    event: str
    document: DocumentStatus | None = None


class RequeueResult(msgspec.Struct, kw_only=True):
    """requeued: the event is in the document stream again as `event_id` and the document is
    pending; superseded: a newer change to the document (`event_id`) was accepted since, so
    nothing was appended. Either way the dead letter is gone."""

    id: str
    doc_id: str
    outcome: Literal["requeued", "superseded"]
    event_id: str


class DroppedDeadLetter(msgspec.Struct, kw_only=True):
    """The dead letter that was deleted; its event is gone for good."""

    id: str
    doc_id: str | None
    dropped: Literal[True]
