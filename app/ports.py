"""Every Protocol the services and the API depend on; adapters implement them (app/adapters/),
and only app/bootstrap/ knows which adapter stands behind each."""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, Protocol

import msgspec

from app.domain.events import ConsumerInfo, Entry, Event, GroupInfo, StoreMemory
from app.domain.records import (
    Chunk,
    DocumentState,
    Encoded,
    EncodedQuery,
    Hit,
    IndexedChunk,
    IndexQuery,
    IndexStats,
    Vector,
)

if TYPE_CHECKING:
    # Records owned by the domain and services that exchange them, which import this module.
    from app.domain.doc_status import Applied, Written
    from app.services.dead_letters import RequeueCommand, RequeueReply
    from app.services.erasure import Erasure


class Embedder(Protocol):
    """Turns texts into L2-normalised vectors; the model id is part of the index identity."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def has_token_vectors(self) -> bool: ...

    @property
    def max_text_tokens(self) -> int:
        """Tokens of text the model reads per input, special tokens excluded."""
        ...

    def token_counter(self) -> Callable[[str], int]:
        """A pure function giving a text's length in this model's tokens (no specials)."""
        ...

    async def embed_documents(self, texts: Sequence[str]) -> Encoded: ...

    async def embed_query(self, text: str) -> EncodedQuery: ...

    def close(self) -> None: ...


class VectorIndex(Protocol):
    """Chunk storage with dense (cosine) and BM25 retrieval, filtered by tenant."""

    async def upsert(self, chunks: Sequence[IndexedChunk]) -> None:
        """Write chunks; durable when this returns."""
        ...

    async def delete_document(
        self,
        tenant: str,
        doc_id: str,
        *,
        older_than: str | None = None,
        written_by: str | None = None,
    ) -> int:
        """Delete a document's chunks: all of them; with `older_than`, those written by an
        earlier event (or by none: points from before chunks carried their event); with
        `written_by`, those written by that event. Returns the points removed."""
        ...

    async def document(self, tenant: str, doc_id: str) -> DocumentState | None: ...

    async def retrieve(self, query: IndexQuery) -> list[Hit]:
        """Union of the dense and BM25 candidates, each with its exact cosine and BM25 score."""
        ...

    async def hydrate(self, hits: Sequence[Hit]) -> None:
        """Fill in the payload fields (document id, title, text, ...) of these hits."""
        ...

    async def vectors(self, chunk_ids: Sequence[str]) -> dict[str, Vector]:
        """Dense vectors of these chunks (for MMR)."""
        ...

    async def token_signatures(self, chunk_ids: Sequence[str]) -> dict[str, bytes]:
        """Packed token signatures of these chunks, for late-interaction rerank."""
        ...

    async def stats(self, tenant: str | None = None) -> IndexStats: ...

    async def ready(self) -> bool: ...

    def close(self) -> None: ...


class Reranker(Protocol):
    """Rescores candidates for a query; a cross-encoder could implement this too."""

    @property
    def name(self) -> str: ...

    def scores(self, query: EncodedQuery, hits: Sequence[Hit]) -> list[float]: ...


class EventLog(Protocol):
    """Append-only event streams with consumer groups (Redis Streams semantics).

    Entry ids are "<ms>-<seq>", increasing within a stream. Every read returns `Entry`s:
    an entry that does not decode still comes back, with `error` set and its `raw` bytes,
    so a consumer can dead-letter it rather than stall on it. An unreachable log raises
    DependencyUnavailable.
    """

    async def append(self, stream: str, event: Event, *, replicated: bool = True) -> str:
        """Append one event; returns its entry id. Acknowledged once this returns: with
        `replicated`, once the configured number of replicas confirmed it too (else
        NotReplicated, and the event may or may not survive a failover)."""
        ...

    async def append_many(
        self, stream: str, events: Sequence[Event], *, replicated: bool = True
    ) -> list[str]:
        """Append events in order, all or none, in one round trip; returns their ids.
        `replicated` as for `append`."""
        ...

    async def ensure_group(self, stream: str, group: str, *, start: str = "0") -> None:
        """Create the group (and the stream) unless it exists; a new group reads from
        `start`: "0" for everything in the stream, "$" for only what is appended next."""
        ...

    async def read_group(
        self, stream: str, group: str, consumer: str, *, count: int, block_ms: int
    ) -> list[Entry]:
        """Up to `count` entries never delivered to the group, now pending on `consumer`;
        waits up to `block_ms` for one (0: do not wait) and returns [] if none came."""
        ...

    async def read_pending(
        self, stream: str, group: str, consumer: str, *, count: int, after: str = "0"
    ) -> list[Entry]:
        """Entries delivered to `consumer` and not yet acknowledged, with ids above `after`;
        each read counts as another delivery. An entry deleted from the stream since comes
        back with `event` None and `error` set; acknowledge it."""
        ...

    async def claim_idle(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[Entry]:
        """Take over up to `count` entries pending on any consumer for at least
        `min_idle_ms` (their consumer is presumed dead); each claim counts as a delivery."""
        ...

    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        """Mark entries processed; returns how many were pending."""
        ...

    async def add_strikes(
        self, stream: str, group: str, ids: Sequence[str], delta: int = 1
    ) -> dict[str, int]:
        """Add `delta` to each entry's strike count (kept beside the group) and return the
        new counts. A strike is an isolated attempt to apply the entry that failed, or that
        was under way when its process died: unlike a delivery, a batch's death or a
        takeover is never one (app/services/projector.py)."""
        ...

    async def strikes(self, stream: str, group: str, ids: Sequence[str]) -> dict[str, int]:
        """Each entry's strike count; entries without strikes are absent."""
        ...

    async def clear_strikes(self, stream: str, group: str, ids: Sequence[str]) -> None:
        """Forget the strikes of entries that are done with (acknowledged)."""
        ...

    async def range(
        self, stream: str, *, start: str = "-", end: str = "+", count: int = 1000
    ) -> list[Entry]:
        """Entries with start <= id <= end, oldest first, at most `count`. To page on,
        pass start=f"({last.id}" (exclusive)."""
        ...

    async def get(self, stream: str, entry_id: str) -> Entry | None:
        """One entry by id; None if absent or if `entry_id` is not a stream id."""
        ...

    async def length(self, stream: str) -> int:
        """Entries in the stream (0 if it does not exist)."""
        ...

    async def trim_to_length(self, stream: str, max_entries: int) -> int:
        """Delete the oldest entries until at most `max_entries` remain (exactly, not
        approximately); returns how many were deleted."""
        ...

    async def trim_before(self, stream: str, entry_id: str) -> int:
        """Delete every entry whose id is below `entry_id`; returns how many."""
        ...

    async def clock_ms(self) -> int:
        """The log's own clock, epoch ms: it stamps entry ids, and the app host's clock may
        be skewed against it."""
        ...

    async def memory_usage(self, stream: str) -> int:
        """Bytes the stream takes in the log's memory, counted over all of it (0 if it does
        not exist). Costs the server time in proportion to the stream's size (bench/
        stream_memory_cost.py): the caller decides how often to ask."""
        ...

    async def memory(self, stream: str) -> StoreMemory:
        """Memory in use and the limit of the server holding `stream` (every key of it
        counted, not only the log's)."""
        ...

    async def group_info(self, stream: str, group: str) -> GroupInfo | None:
        """The group's pending count, lag and position; None if stream or group is missing."""
        ...

    async def consumers(self, stream: str, group: str) -> list[ConsumerInfo]:
        """The group's consumers; [] if the stream or the group is missing."""
        ...

    async def forget_consumer(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int
    ) -> bool:
        """Remove `consumer` from the group if, at that moment, nothing is pending on it and
        it has been idle for `min_idle_ms`; checked and done atomically, so entries it read
        in between are never dropped with it. Whether it was removed."""
        ...

    async def trim_older_than(self, stream: str, seconds: float) -> int:
        """Delete entries older than `seconds` by the log's own clock; returns how many."""
        ...

    async def ping(self) -> bool:
        """Whether the log answers now (never raises)."""
        ...

    async def close(self) -> None: ...


class CachedEmbedding(msgspec.Struct, frozen=True, kw_only=True):
    """What the embedding cache holds for one text."""

    vector: bytes  # float32, native byte order: np.frombuffer(vector, np.float32)
    signature: bytes | None  # packed token signature (late interaction), if the model has one


class CacheStats(msgspec.Struct, frozen=True, kw_only=True):
    """This process's embedding-cache counters since start."""

    hits: int
    misses: int  # includes lookups answered as misses while the cache was unreachable
    writes: int
    errors: int  # failed or skipped round trips while the cache was unreachable


class EmbeddingCache(Protocol):
    """Embeddings by (tenant, model id, text). Best effort: it never fails its caller;
    when the store is unreachable lookups miss and writes are dropped."""

    async def get_many(
        self, tenant: str, model_id: str, texts: Sequence[str]
    ) -> list[CachedEmbedding | None]:
        """One result per text, in order; None for a miss."""
        ...

    async def put_many(
        self, tenant: str, model_id: str, texts: Sequence[str], items: Sequence[CachedEmbedding]
    ) -> None: ...

    async def forget_many(self, tenant: str, model_id: str, texts: Sequence[str]) -> int:
        """Remove these texts' embeddings (an erasure); returns how many were there. Unlike
        the rest, this raises DependencyUnavailable when the store cannot be reached."""
        ...

    def stats(self) -> CacheStats: ...

    async def close(self) -> None: ...


class IndexCatalog(Protocol):
    """The generations of one index (one embedding model): exactly one is active, and it is
    the one every read and write goes to; a replay builds another beside it, then swaps.

    Generations are opaque strings (an Edge shard directory, a Qdrant collection behind an
    alias). `activate` is the only way the active one changes, it is atomic for readers and
    writers alike, and it survives a restart; an adapter that cannot promise that must not
    implement this port. Only the process that writes the index holds its catalog.
    """

    @property
    def active(self) -> str:
        """The generation reads and writes go to now."""
        ...

    def current(self) -> VectorIndex:
        """The active generation's index. Resolve it per operation, never keep it: after
        `activate` the one returned before is closed."""
        ...

    async def create(
        self, *, corpus: AsyncIterable[Sequence[Chunk]] | None = None
    ) -> tuple[str, VectorIndex]:
        """A new, empty generation beside the active one, not yet read by anyone.

        `corpus`: the chunks the caller is about to write to it, in batches, planned only as
        they are read. An adapter that must know the corpus before its first write reads it
        (the cluster's BM25 length normalisation); one whose index keeps its own statistics
        as it goes (Edge) ignores it."""
        ...

    async def activate(self, generation: str) -> None:
        """Make `generation` (from `create`) the active one, durably and for reads and writes
        at once, then drop the previous one (operations already running on it finish first)."""
        ...

    async def discard(self, generation: str) -> None:
        """Drop a generation from `create` that will never be activated (an aborted build)."""
        ...

    def close(self) -> None: ...


class DocStatusStore(Protocol):
    """Where each document's written and applied records live (app/domain/doc_status.py).
    `index_id` names the index the applied records describe (its embedding model id), so an
    index built by another model starts with none. Unreachable storage raises
    DependencyUnavailable."""

    async def written(self, tenant: str, doc_ids: Sequence[str]) -> list[Written | None]: ...

    async def applied(
        self, index_id: str, tenant: str, doc_ids: Sequence[str]
    ) -> list[Applied | None]: ...

    async def both(
        self, index_id: str, tenant: str, doc_ids: Sequence[str]
    ) -> list[tuple[Written | None, Applied | None]]:
        """Both records of each document, read together in one round trip."""
        ...

    async def record_written(self, tenant: str, records: Mapping[str, Written]) -> None:
        """Store each record unless the document already has one for a later entry."""
        ...

    async def record_applied(
        self,
        index_id: str,
        tenant: str,
        records: Mapping[str, Applied],
        *,
        expect: Mapping[str, str] | None = None,
    ) -> set[str]:
        """Store each record unless the document already has one for a later entry; with
        `expect` (doc id -> event id), store that document's record only if the stored one
        is for exactly that entry (compare-and-set). Returns the doc ids stored."""
        ...

    async def adopt_applied(self, index_id: str, source: str, tenants: Sequence[str]) -> None:
        """Make `source`'s applied records `index_id`'s, replacing them whole, for each of
        these tenants (atomically per tenant); `source` is left with none. A replay's swap:
        the records built with a new generation then describe the index in its place."""
        ...

    async def drop_applied(self, index_id: str, tenants: Sequence[str]) -> None:
        """Forget `index_id`'s applied records of these tenants (an aborted replay's)."""
        ...

    async def forget(
        self, index_ids: Sequence[str], tenant: str, records: Mapping[str, str]
    ) -> int:
        """Remove the written record, and the applied records of these indexes, of each
        document (doc id -> entry id) that are for exactly that entry: the document is then
        unknown, unless a later change was recorded meanwhile. Returns the records removed."""
        ...

    async def close(self) -> None: ...


class DeadLetterStore(Protocol):
    """What acting on dead letters needs beyond EventLog (app/services/dead_letters.py):
    reading a stream newest first, deleting one entry, and the atomic requeue. Unreachable
    storage raises DependencyUnavailable."""

    async def newest_first(self, stream: str, *, end: str = "+", count: int) -> list[Entry]:
        """Entries with id <= end (or < it, as "(<id>"), newest first, at most `count`."""
        ...

    async def delete(self, stream: str, entry_id: str) -> bool:
        """Remove one entry; whether it was there."""
        ...

    async def requeue(self, command: RequeueCommand, *, scan_limit: int) -> RequeueReply:
        """In one atomic step: if the dead letter is still there, look for a change to the
        document newer than `command.after` (its written record, its applied record, and the
        entries of `command.stream` the group has not acknowledged, at most `scan_limit` of
        them); if there is one, delete the dead letter and answer superseded with its id;
        else append the event, record it as the document's newest write, delete the dead
        letter and answer requeued with the new entry's id."""
        ...

    async def close(self) -> None: ...


class ErasureRecords(Protocol):
    """Where erasure requests and their progress are kept (app/services/erasure.py), readable
    by every process. Unreachable storage raises DependencyUnavailable."""

    async def save(self, erasure: Erasure) -> None: ...

    async def load(self, erasure_id: str) -> Erasure | None: ...

    async def open_ones(self) -> list[Erasure]:
        """Every request not yet complete, oldest first."""
        ...

    async def close(self) -> None: ...


# What a stream rewrite does with one entry: keep it as it is, drop it, or store these
# encoded event bytes under its id instead.
Decision = Literal["keep", "drop"] | bytes


class RewriteReport(msgspec.Struct, kw_only=True):
    """What one stream rewrite did; filled in as it goes."""

    stream: str
    read: int = 0  # entries read (those appended during the rewrite included)
    kept: int = 0
    dropped: int = 0
    replaced: int = 0
    groups: int = 0  # consumer groups carried over
    pending_carried: int = 0  # pending entries recreated on their consumers
    pending_dropped: int = 0  # pending entries not recreated: the entry was dropped
    seconds: float = 0.0


class LogRewriter(Protocol):
    """Rewrites a stream in place (app/adapters/redis/rewrite.py): entries keep their ids,
    consumer groups their positions and consumers their pending entries, and appends go on
    throughout. Only one rewrite of a stream runs at a time (InvalidRequest 409 otherwise).
    Unreachable storage raises DependencyUnavailable."""

    async def rewrite(
        self,
        stream: str,
        choose: Callable[[Entry], Decision],
        *,
        upto: str,
        on_page: Callable[[RewriteReport], None] | None = None,
    ) -> RewriteReport:
        """Apply `choose` to every entry with id <= `upto` (later ones are kept), then swap the
        rewritten stream in, atomically; `on_page` sees the report after each page copied."""
        ...

    async def rewrite_persistence(self) -> str:
        """Have the server rewrite its append-only file, so that what rewrites removed leaves
        its disk too (the old file still holds every command); says what happened."""
        ...

    async def settled_below(self, stream: str) -> str:
        """The lowest id some consumer group of the stream may still need: every entry below
        it is acknowledged by every group. "0-0" when the stream has no group."""
        ...

    async def close(self) -> None: ...


class Lease(Protocol):
    """Named claims that expire, shared by every process of a deployment, so that a periodic
    job on shared state (retention trimming) runs in one process at a time rather than in
    each. Unreachable storage raises DependencyUnavailable."""

    async def take(self, name: str, *, holder: str, ttl_ms: int) -> bool:
        """Claim `name` for `ttl_ms` as `holder` if nobody holds it now; whether it was
        claimed. A claim is never released early: it ends when it expires."""
        ...

    async def close(self) -> None: ...


class RateDecision(msgspec.Struct, frozen=True, kw_only=True):
    """One request's outcome, with what the RateLimit-* and Retry-After headers report."""

    allowed: bool
    limit: int  # the burst: most requests a full bucket allows at once
    remaining: int  # whole tokens left
    reset_seconds: float  # until the bucket is full again
    retry_after_seconds: float  # until one token is back; 0 when allowed


class RateLimiter(Protocol):
    """Per-key token buckets shared by every replica: a bucket holds up to `burst` tokens and
    refills at `rate` a second. Never fails its caller: an unreachable store lets the
    request through."""

    async def take(self, key_id: str, *, rate: float, burst: int, cost: int = 1) -> RateDecision:
        """Take `cost` tokens from `key_id`'s bucket if it has them."""
        ...

    async def close(self) -> None: ...
