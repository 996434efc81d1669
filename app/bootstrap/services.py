"""Everything `serve` runs (Services): the index side, the query and write services, access."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec

from app.adapters.redis.dead_letters import RedisDeadLetters
from app.adapters.redis.doc_status import RedisDocStatus
from app.adapters.redis.rate_limit import RedisRateLimiter
from app.adapters.redis.streams import RedisEventLog
from app.api.access import Access
from app.api.keys import KeyRing
from app.bootstrap.event_log import check_redis_url, redis_target
from app.bootstrap.index_side import IndexSide, build_index_side, index_id
from app.domain.events import Streams
from app.domain.records import DEFAULT_TENANT, ChunkingParams
from app.ports import (
    CacheStats,
    DocStatusStore,
    Embedder,
    EventLog,
)
from app.services.active_index import ActiveIndex
from app.services.dead_letters import DeadLetters
from app.services.documents import Documents
from app.services.ingest import LoggedIngest
from app.services.projector import Projector
from app.services.query import Pipeline, PipelineConfig
from app.services.recorder import RetrievalRecorder
from app.services.reranking import LateInteractionReranker
from app.settings import Settings

log = logging.getLogger(__name__)


class Services(msgspec.Struct, kw_only=True):
    """Everything `serve` runs; `projector` is None when RAG_PROJECTOR_IN_PROCESS is false."""

    settings: Settings
    index_side: IndexSide
    pipeline: Pipeline
    ingest: LoggedIngest
    default_chunking: ChunkingParams
    projector: Projector | None
    recorder: RetrievalRecorder
    access: Access
    dead_letters: DeadLetters
    documents: Documents

    @property
    def embedder(self) -> Embedder:
        return self.index_side.embedder

    @property
    def index(self) -> ActiveIndex:
        return self.index_side.index

    @property
    def event_log(self) -> EventLog:
        return self.index_side.event_log

    @property
    def streams(self) -> Streams:
        return self.index_side.streams

    def cache_stats(self) -> CacheStats:
        """This process's embedding-cache counters, for /api/v1/stats."""
        return self.index_side.cache.stats()

    async def aclose(self) -> None:
        await self.access.limiter.close()
        await self.dead_letters.store.close()
        await self.index_side.aclose()


def build_access(settings: Settings) -> Access:
    """API keys (None: open mode, warned about) and the per-key rate limiter."""
    check_redis_url(settings.redis_url)
    keys = load_keys(settings)
    if keys is not None:
        log.info("API keys: %d, from %s", keys.size, keys.path)
    else:
        log.warning(
            "RAG_API_KEYS_FILE is not set: the API is OPEN, without authentication or rate "
            "limits, and every caller acts for the one tenant %r. Set it before exposing the "
            "service (docs/security.md)",
            DEFAULT_TENANT,
        )
    return Access(
        keys,
        RedisRateLimiter(
            redis_target(settings),
            prefix=settings.stream_prefix,
            pool_size=settings.redis_pool_size,
        ),
        rate_per_second=settings.rate_limit_per_second,
        burst=settings.rate_limit_burst,
    )


def build_services(settings: Settings) -> Services:
    access = build_access(settings)  # first: a bad keys file stops start-up before the model loads
    side = build_index_side(settings, "serve")
    reranker = (
        LateInteractionReranker(side.embedder.dim) if side.embedder.has_token_vectors else None
    )
    pipeline = Pipeline(
        side.embedder,
        side.index,
        reranker,
        PipelineConfig(
            default_top_k=settings.top_k,
            default_min_score=settings.min_score,
            rerank_by_default=settings.rerank,
            rerank_top_k=settings.rerank_top_k,
            mmr_max_candidates=settings.mmr_max_candidates,
            trace_query_text=settings.trace_query_text,
        ),
    )
    ingest = LoggedIngest(
        side.event_log,
        side.status,
        streams=side.streams,
        index_id=side.embedder.model_id,
        max_documents=settings.max_documents_per_request,
        wait_seconds=settings.ingest_wait_seconds,
        index=side.index,
    )
    if not settings.projector_in_process and side.exclusive:
        log.warning(
            "RAG_PROJECTOR_IN_PROCESS=false: indexing is paused. This process holds the "
            "embedded index, so no other can apply document events to it; they wait in the "
            "stream until a serve with the projector (or a worker, once this one stops) runs"
        )
    return Services(
        settings=settings,
        index_side=side,
        pipeline=pipeline,
        ingest=ingest,
        default_chunking=ChunkingParams(size=settings.chunk_size, overlap=settings.chunk_overlap),
        projector=side.projector if settings.projector_in_process else None,
        recorder=RetrievalRecorder(
            side.event_log,
            side.streams.retrievals,
            retention_seconds=settings.retrieval_retention_seconds,
        ),
        access=access,
        dead_letters=_dead_letters(settings, side.event_log, side.status, side.embedder.model_id),
        documents=Documents(
            ingest,
            side.event_log,
            side.status,
            side.index,
            streams=side.streams,
            index_id=side.embedder.model_id,
        ),
    )


def _dead_letters(
    settings: Settings,
    event_log: EventLog,
    status: DocStatusStore,
    index_id: str,
) -> DeadLetters:
    """Dead letters over these adapters; closing its own store (`.store.close()`) is the
    caller's, the adapters stay theirs. `index_id` is the index's embedding model id."""
    return DeadLetters(
        event_log,
        RedisDeadLetters(
            redis_target(settings),
            prefix=settings.stream_prefix,
            pool_size=min(4, settings.redis_pool_size),
        ),
        status,
        streams=Streams(settings.stream_prefix),
        index_id=index_id,
    )


@contextlib.asynccontextmanager
async def open_dead_letters(settings: Settings) -> AsyncIterator[DeadLetters]:
    """Dead letters on their own, for `rag-pipeline dead-letters`: no model loaded, no index
    opened; `settings.redis_url` resolved (`resolve_event_log`)."""
    async with contextlib.AsyncExitStack() as closing:
        event_log = RedisEventLog(redis_target(settings), pool_size=2)
        closing.push_async_callback(event_log.close)
        status = RedisDocStatus(redis_target(settings), prefix=settings.stream_prefix, pool_size=2)
        closing.push_async_callback(status.close)
        service = _dead_letters(settings, event_log, status, index_id(settings))
        closing.push_async_callback(service.store.close)
        yield service


def load_keys(settings: Settings) -> KeyRing | None:
    """The keys RAG_API_KEYS_FILE names (None: open mode); SettingsError if unusable."""
    if not settings.api_keys_file:
        return None
    return KeyRing(
        Path(settings.api_keys_file).expanduser(),
        reload_seconds=settings.api_keys_reload_seconds,
    )


def build_worker(settings: Settings) -> IndexSide:
    # The worker's app reads the keys file in its lifespan (replays are admin work); reading
    # it here first stops a bad one before the model loads, as build_services does.
    load_keys(settings)
    return build_index_side(settings, "worker")
