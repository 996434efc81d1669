"""What applies document events to the index (IndexSide), built from the settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
import threadpoolctl

from app.adapters.embedders.circuit_breaker import CircuitBreaker
from app.adapters.embedders.local import MODEL_ID as LOCAL_MODEL_ID
from app.adapters.embedders.local import LocalEmbedder
from app.adapters.embedders.openai_api import OpenAIEmbedder
from app.adapters.qdrant.edge_catalog import EdgeCatalog
from app.adapters.qdrant.remote_catalog import QdrantCatalog
from app.adapters.qdrant.remote_index import QdrantIndex
from app.adapters.redis.cache import RedisEmbeddingCache
from app.adapters.redis.doc_status import RedisDocStatus
from app.adapters.redis.erasures import RedisErasureRecords
from app.adapters.redis.jobs import RedisJobStore, RedisReplayJobs
from app.adapters.redis.lease import RedisLease
from app.adapters.redis.rewrite import RedisLogRewriter
from app.adapters.redis.streams import RedisEventLog
from app.bootstrap.event_log import check_data_dir, check_redis_url, redis_target
from app.domain.events import Streams
from app.errors import SettingsError
from app.index_lock import IndexOwnership
from app.ports import (
    DocStatusStore,
    Embedder,
    EmbeddingCache,
    EventLog,
    IndexCatalog,
    LogRewriter,
)
from app.services.active_index import ActiveIndex
from app.services.auto_compaction import AutoCompaction
from app.services.compaction import Compaction, CompactionProgress
from app.services.erasure import Eraser
from app.services.indexing import Indexer
from app.services.jobs import Jobs
from app.services.projector import Projector, ProjectorConfig
from app.services.replay import Replay, ReplayConfig, ReplayProgress
from app.services.replay_jobs import ReplayJobs
from app.services.retention import Bound, Retention
from app.services.stream_usage import StreamUsage
from app.settings import Settings

if TYPE_CHECKING:
    from app.bootstrap.services import Services

log = logging.getLogger(__name__)


class IndexSide(msgspec.Struct, kw_only=True):
    """What applies document events to the index: everything a `worker` runs, and what
    `serve` holds for its own projector and for the read side's index and embedder.

    Typed by ports; `closing` holds how to close the adapters behind them, registered by
    `build_index_side`, the one place that knows which adapters those are.
    """

    embedder: Embedder
    # The index's generations (app/services/replay.py builds new ones and swaps them in).
    catalog: IndexCatalog
    index: ActiveIndex  # the active generation, whichever that is
    exclusive: bool  # this process holds the embedded index's single-writer claim
    event_log: EventLog
    cache: EmbeddingCache
    status: DocStatusStore
    indexer: Indexer
    projector: Projector
    replays: ReplayJobs  # POST /api/v1/reindex: replays run where the index is held
    replay_config: ReplayConfig
    # Compaction of the document stream (POST /api/v1/compact, and automatic once it grew).
    compactions: Jobs[CompactionProgress]
    auto_compaction: AutoCompaction
    eraser: Eraser  # DELETE /api/v1/documents/{id}?erase=true, `rag-pipeline erase`
    retention: Retention  # trims feedback and dead letters (serve and worker run it)
    usage: StreamUsage  # stream sizes and Redis memory, for /metrics and /api/v1/stats
    closing: contextlib.AsyncExitStack

    @property
    def streams(self) -> Streams:
        return self.projector.streams

    def replay(
        self,
        config: ReplayConfig | None = None,
        on_progress: Callable[[ReplayProgress], None] | None = None,
    ) -> Replay:
        """A replay into a new generation of this index, pausing this projector to swap."""
        return Replay(
            catalog=self.catalog,
            event_log=self.event_log,
            embedder=self.embedder,
            cache=self.cache,
            status=self.status,
            streams=self.projector.streams,
            live=self.projector,
            config=config or self.replay_config,
            on_progress=on_progress,
        )

    async def checks(self) -> dict[str, bool]:
        """Whether the index and the event log answer now, as /ready reports them."""
        index, event_log = await asyncio.gather(self.index.ready(), self.event_log.ping())
        return {"index": index, "event_log": event_log}

    async def aclose(self) -> None:
        """Close everything, in the reverse order it was opened."""
        await self.closing.aclose()


def held_index_side(state: object) -> IndexSide | None:
    """The IndexSide an app's state holds: `serve` keeps it in its Services, `worker` on its
    own; None before start-up is done."""
    services: Services | None = getattr(state, "services", None)
    if services is not None:
        return services.index_side
    index_side: IndexSide | None = getattr(state, "index_side", None)
    return index_side


def consumer_name() -> str:
    """This process's name in the consumer group: unique among live processes."""
    return f"{socket.gethostname()}-{os.getpid()}"


def build_index_side(settings: Settings, role: str) -> IndexSide:
    """Embedder, index (claimed for this process), Redis adapters and the projector.
    Blocking (loads the model, opens the shard): run it off the event loop."""
    if not settings.redis_url and not settings.redis_sentinels:
        raise SettingsError(
            "REDIS_URL is empty: resolve it first (app.bootstrap.resolve_event_log)"
        )
    # Settings the libraries below would reject, checked before the model loads.
    check_redis_url(settings.redis_url)
    if not settings.qdrant_url:
        check_data_dir(settings, "the embedded index, QDRANT_URL being empty")
    # The BLAS products here (rerank, MMR) are small; OpenBLAS's worker threads keep spinning
    # after each one and take the cores the embedder needs next: measured, one thread cut
    # search p50 from 59 ms to 32 ms with rerank on.
    threadpoolctl.threadpool_limits(1, user_api="blas")
    closing = contextlib.AsyncExitStack()
    try:
        return _open_index_side(settings, role, closing)
    except BaseException:
        # Nothing has run on an event loop yet: what was opened closes on a loop of its own.
        asyncio.run(closing.aclose())
        raise


def _open_index_side(
    settings: Settings, role: str, closing: contextlib.AsyncExitStack
) -> IndexSide:
    embedder, pause = _open_embedder(settings, closing)
    catalog: IndexCatalog
    exclusive = not settings.qdrant_url
    if settings.qdrant_url:
        # A cluster has any number of writers: serve replicas and workers share it, and
        # the index is created (or found) on first use, so nothing is claimed or opened.
        cluster = QdrantIndex.connect(
            settings.qdrant_url,
            api_key=settings.qdrant_api_key,
            pool_size=settings.qdrant_pool_size,
            timeout_seconds=settings.qdrant_timeout_seconds,
            prefer_grpc=settings.qdrant_prefer_grpc,
            model_id=embedder.model_id,
            dim=embedder.dim,
            prefix=settings.qdrant_collection_prefix,
            metadata_indexes=settings.metadata_index_fields(),
        )
        qdrant = QdrantCatalog(cluster)
        closing.push_async_callback(qdrant.aclose)
        catalog = qdrant
        where = f"Qdrant {settings.qdrant_url} alias {cluster.alias}"
    else:
        ownership = IndexOwnership(settings.data_path, embedder.model_id, role).acquire()
        closing.callback(ownership.release)
        edge = EdgeCatalog(
            settings.data_path,
            model_id=embedder.model_id,
            dim=embedder.dim,
            metadata_indexes=settings.metadata_index_fields(),
        )
        closing.callback(edge.close)
        catalog = edge
        where = f"{edge.current().path} (held by this {role})"
    index = ActiveIndex(catalog)
    # Constructing the Redis clients connects nothing; they cannot fail on an outage.
    status = RedisDocStatus(
        redis_target(settings), prefix=settings.stream_prefix, pool_size=settings.redis_pool_size
    )
    closing.push_async_callback(status.close)
    cache = RedisEmbeddingCache(
        redis_target(settings),
        prefix=settings.stream_prefix,
        ttl_seconds=settings.cache_ttl_seconds,
        pool_size=settings.redis_pool_size,
    )
    closing.push_async_callback(cache.close)
    event_log = RedisEventLog(redis_target(settings), pool_size=settings.redis_pool_size)
    closing.push_async_callback(event_log.close)
    indexer = Indexer(embedder, index)
    lease = RedisLease(redis_target(settings), prefix=settings.stream_prefix)
    closing.push_async_callback(lease.close)
    projector = Projector(
        event_log,
        indexer,
        cache,
        status,
        streams=Streams(settings.stream_prefix),
        consumer=consumer_name(),
        config=ProjectorConfig(
            batch=settings.projector_batch,
            max_deliveries=settings.projector_max_deliveries,
            claim_idle_ms=settings.projector_claim_idle_ms,
            # The Edge shard has no other writer (IndexOwnership), so whatever another
            # consumer left pending was left by a process that is gone. Cluster consumers
            # run side by side and take over only what sat idle.
            exclusive=exclusive,
            kill_on_doc=settings.fault_kill_doc_id or None,
        ),
        pause=pause,
    )
    log.info("index %s at %s", embedder.model_id, where)
    rewriter = RedisLogRewriter(redis_target(settings))
    closing.push_async_callback(rewriter.close)
    compactions, compaction_store = compaction_jobs(
        settings, event_log, status, embedder.model_id, rewriter, closing
    )
    replays = ReplayJobs(
        lambda: index_side.replay(),
        store=RedisReplayJobs(redis_target(settings), prefix=settings.stream_prefix),
    )
    erasures = RedisErasureRecords(
        redis_target(settings), prefix=settings.stream_prefix, pool_size=2
    )
    closing.push_async_callback(erasures.close)
    index_side = IndexSide(
        embedder=embedder,
        catalog=catalog,
        index=index,
        exclusive=exclusive,
        event_log=event_log,
        cache=cache,
        status=status,
        indexer=indexer,
        projector=projector,
        replays=replays,
        replay_config=ReplayConfig(batch=settings.replay_batch),
        compactions=compactions,
        auto_compaction=AutoCompaction(
            compactions,
            compaction_store,
            event_log,
            Streams(settings.stream_prefix),
            min_entries=settings.compact_min_entries,
            growth=settings.compact_growth,
            every=settings.compact_check_seconds,
        ),
        eraser=Eraser(
            records=erasures,
            event_log=event_log,
            rewriter=rewriter,
            status=status,
            cache=cache,
            planner=indexer,
            index_id=embedder.model_id,
            streams=Streams(settings.stream_prefix),
            replays=replays,
        ),
        retention=_retention(settings, event_log, lease),
        usage=StreamUsage(event_log, Streams(settings.stream_prefix)),
        closing=closing,
    )
    # First to close: a running replay is cancelled before what it writes to goes.
    closing.push_async_callback(index_side.replays.aclose)
    return index_side


def compaction_jobs(
    settings: Settings,
    event_log: EventLog,
    status: DocStatusStore,
    index_id: str,
    rewriter: LogRewriter,
    closing: contextlib.AsyncExitStack,
) -> tuple[Jobs[CompactionProgress], RedisJobStore[CompactionProgress]]:
    """Compactions of the document stream as jobs, and where their records are kept."""
    store = RedisJobStore(
        redis_target(settings),
        kind="compaction",
        progress=CompactionProgress,
        prefix=settings.stream_prefix,
    )
    jobs = Jobs(
        "compaction",
        lambda: Compaction(
            event_log=event_log,
            rewriter=rewriter,
            status=status,
            index_id=index_id,
            streams=Streams(settings.stream_prefix),
            tombstone_retention_seconds=settings.tombstone_retention_hours * 3600,
        ),
        store=store,
        interrupted="(the stream is as it was: a compaction switches it in one step at its end)",
    )
    # Closed in reverse: the job is cancelled (jobs.aclose closes the store) before the
    # rewriter and the event log it uses.
    closing.push_async_callback(jobs.aclose)
    return jobs, store


def _retention(settings: Settings, event_log: EventLog, lease: RedisLease) -> Retention:
    streams = Streams(settings.stream_prefix)
    return Retention(
        event_log,
        lease,
        feedback=Bound(
            stream=streams.feedback,
            max_age_seconds=settings.feedback_retention_seconds,
            max_entries=settings.feedback_max_entries,
        ),
        dead_letter=Bound(
            stream=streams.dead_letter,
            max_age_seconds=settings.dead_letter_retention_seconds,
            max_entries=settings.dead_letter_max_entries,
        ),
        holder=consumer_name(),
    )


def _open_embedder(
    settings: Settings, closing: contextlib.AsyncExitStack
) -> tuple[Embedder, Callable[[], float] | None]:
    """The embedder RAG_EMBEDDER names (its model id and dimension name the index), and
    what tells the projector to pause: the seconds until a remote embedder's circuit
    breaker lets calls through again (None for the local model, which has none)."""
    if settings.embedder == "openai":
        remote = _openai_embedder(settings)
        closing.callback(remote.close)
        closing.push_async_callback(remote.aclose)
        return remote, remote.breaker.retry_after
    local = LocalEmbedder(
        batch_size=settings.batch_size,
        max_concurrent_batches=settings.max_concurrent_batches,
        threads=settings.embedder_threads,
    )
    closing.callback(local.close)
    return local, None


def _openai_embedder(settings: Settings) -> OpenAIEmbedder:
    return OpenAIEmbedder(
        api_key=settings.openai_api_key,
        base_url=settings.openai_base_url,
        model=settings.embedding_model,
        dimensions=settings.embedding_dimensions,
        timeout_seconds=settings.embedder_timeout_seconds,
        batch_size=settings.batch_size,
        max_concurrent_batches=settings.max_concurrent_batches,
        max_retries=settings.embedder_max_retries,
        breaker=CircuitBreaker(
            failure_threshold=settings.embedder_breaker_failures,
            cooldown_seconds=settings.embedder_breaker_cooldown_seconds,
        ),
    )


def index_id(settings: Settings) -> str:
    """The index's identity (its embedding model id), without loading a model."""
    if settings.embedder != "openai":
        return LOCAL_MODEL_ID
    embedder = _openai_embedder(settings)  # connects nothing until it embeds
    try:
        return embedder.model_id
    finally:
        embedder.close()
