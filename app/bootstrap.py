"""Builds the adapters and services the settings call for, and closes them in reverse order."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

import msgspec
import redis
import threadpoolctl

from app.adapters.embedders.circuit_breaker import CircuitBreaker
from app.adapters.embedders.local import LocalEmbedder
from app.adapters.embedders.openai_api import OpenAIEmbedder
from app.adapters.qdrant.edge_catalog import EdgeCatalog
from app.adapters.qdrant.remote_catalog import QdrantCatalog
from app.adapters.qdrant.remote_index import QdrantIndex
from app.adapters.redis.cache import RedisEmbeddingCache
from app.adapters.redis.dead_letters import RedisDeadLetters
from app.adapters.redis.doc_status import RedisDocStatus
from app.adapters.redis.embedded import EmbeddedRedis, resolve_redis_url
from app.adapters.redis.rate_limit import RedisRateLimiter
from app.adapters.redis.replay_jobs import RedisReplayJobs
from app.adapters.redis.streams import RedisEventLog
from app.api.access import Access
from app.api.keys import KeyRing
from app.domain.events import Streams
from app.domain.records import DEFAULT_TENANT, ChunkingParams
from app.errors import DependencyUnavailable, SettingsError
from app.ports import Embedder
from app.services.active_index import ActiveIndex
from app.services.dead_letters import DeadLetters
from app.services.indexing import Indexer
from app.services.ingest import LoggedIngest
from app.services.projector import Projector, ProjectorConfig
from app.services.query import Pipeline, PipelineConfig
from app.services.recorder import RetrievalRecorder
from app.services.replay import Replay, ReplayConfig, ReplayProgress
from app.services.replay_jobs import ReplayJobs
from app.services.reranking import LateInteractionReranker
from app.settings import Settings

log = logging.getLogger(__name__)


class IndexHolder(msgspec.Struct, kw_only=True):
    """Who holds an embedded index: written into its lock file for the next one to read."""

    pid: int
    role: str  # "serve", "worker" or "replay"
    command: str


class IndexOwnership:
    """The embedded index's single-writer claim, held for the life of the process.

    Qdrant Edge opens a shard in one process only (a second open fails on the WAL lock with
    an opaque error), so the index has exactly one writer and therefore one projector: the
    process that holds it. An flock beside the shard makes that explicit, released by the
    kernel however the holder dies, and names the holder in the refusal.
    """

    def __init__(self, data_dir: Path, model_id: str, role: str) -> None:
        self.path = data_dir / "index" / f"{model_id}.lock"
        self.role = role
        self._file: IO[bytes] | None = None

    def acquire(self) -> IndexOwnership:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+b")  # noqa: SIM115 - held open until release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = msgspec.json.decode(handle.read(), type=IndexHolder)
                who = f"`rag-pipeline {holder.role}` (pid {holder.pid})"
            except msgspec.DecodeError:
                who = "another process"
            handle.close()
            raise DependencyUnavailable(
                f"the index at {self.path.with_suffix('')} is held by {who}. The embedded "
                "index has one writer, which also runs the projector: stop that process to "
                f"run `{self.role}` on this data directory",
                retry_after=5.0,
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            msgspec.json.encode(
                IndexHolder(pid=os.getpid(), role=self.role, command=" ".join(sys.argv))
            )
        )
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class Projection(msgspec.Struct, kw_only=True):
    """What applies document events to the index: everything a `worker` runs."""

    embedder: Embedder
    # The index's generations (app/services/replay.py builds new ones and swaps them in).
    catalog: EdgeCatalog | QdrantCatalog
    index: ActiveIndex  # the active generation, whichever that is
    ownership: IndexOwnership | None  # only the embedded index has a single-writer claim
    event_log: RedisEventLog
    cache: RedisEmbeddingCache
    status: RedisDocStatus
    indexer: Indexer
    projector: Projector
    replays: ReplayJobs  # POST /api/v1/reindex: replays run where the index is held
    replay_config: ReplayConfig

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

    async def aclose(self) -> None:
        await self.replays.aclose()
        await self.event_log.close()
        await self.cache.close()
        await self.status.close()
        if isinstance(self.catalog, QdrantCatalog):
            await self.catalog.aclose()
        else:
            self.catalog.close()
        if self.ownership is not None:
            self.ownership.release()
        if isinstance(self.embedder, OpenAIEmbedder):
            await self.embedder.aclose()
        self.embedder.close()


class Services(msgspec.Struct, kw_only=True):
    """Everything `serve` runs; `projector` is None when RAG_PROJECTOR_IN_PROCESS is false."""

    settings: Settings
    projection: Projection
    pipeline: Pipeline
    ingest: LoggedIngest
    default_chunking: ChunkingParams
    projector: Projector | None
    recorder: RetrievalRecorder
    access: Access
    dead_letters: DeadLetters

    @property
    def embedder(self) -> Embedder:
        return self.projection.embedder

    @property
    def index(self) -> ActiveIndex:
        return self.projection.index

    @property
    def event_log(self) -> RedisEventLog:
        return self.projection.event_log

    @property
    def streams(self) -> Streams:
        return self.projection.projector.streams

    async def aclose(self) -> None:
        await self.access.limiter.close()
        await self.dead_letters.store.close()
        await self.projection.aclose()


def held_projection(state: object) -> Projection | None:
    """The Projection an app's state holds: `serve` keeps it in its Services, `worker` on its
    own; None before start-up is done."""
    services: Services | None = getattr(state, "services", None)
    if services is not None:
        return services.projection
    projection: Projection | None = getattr(state, "projection", None)
    return projection


def consumer_name() -> str:
    """This process's name in the consumer group: unique among live processes."""
    return f"{socket.gethostname()}-{os.getpid()}"


def build_projection(settings: Settings, role: str) -> Projection:
    """Embedder, index (claimed for this process), Redis adapters and the projector.
    Blocking (loads the model, opens the shard): run it off the event loop."""
    if not settings.redis_url:
        raise SettingsError(
            "REDIS_URL is empty: resolve it first (app.adapters.redis.embedded.resolve_redis_url)"
        )
    # Settings the libraries below would reject, checked before the model loads.
    check_redis_url(settings.redis_url)
    if not settings.qdrant_url:
        check_data_dir(settings, "the embedded index, QDRANT_URL being empty")
    # The BLAS products here (rerank, MMR) are small; OpenBLAS's worker threads keep spinning
    # after each one and take the cores the embedder needs next: measured, one thread cut
    # search p50 from 59 ms to 32 ms with rerank on.
    threadpoolctl.threadpool_limits(1, user_api="blas")
    embedder = build_embedder(settings)
    with contextlib.ExitStack() as undo:
        undo.callback(embedder.close)
        catalog: EdgeCatalog | QdrantCatalog
        ownership: IndexOwnership | None = None
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
            catalog = QdrantCatalog(cluster)
            where = f"Qdrant {settings.qdrant_url} alias {cluster.alias}"
        else:
            ownership = IndexOwnership(settings.data_path, embedder.model_id, role).acquire()
            undo.callback(ownership.release)
            catalog = EdgeCatalog(
                settings.data_path,
                model_id=embedder.model_id,
                dim=embedder.dim,
                metadata_indexes=settings.metadata_index_fields(),
            )
            undo.callback(catalog.close)
            where = f"{catalog.current().path} (held by this {role})"
        index = ActiveIndex(catalog)
        # Constructing the Redis clients connects nothing; they cannot fail on an outage.
        event_log = RedisEventLog(settings.redis_url, pool_size=settings.redis_pool_size)
        cache = RedisEmbeddingCache(
            settings.redis_url,
            prefix=settings.stream_prefix,
            ttl_seconds=settings.cache_ttl_seconds,
            pool_size=settings.redis_pool_size,
        )
        status = RedisDocStatus(
            settings.redis_url, prefix=settings.stream_prefix, pool_size=settings.redis_pool_size
        )
        undo.pop_all()
    indexer = Indexer(embedder, index)
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
            exclusive=ownership is not None,
            kill_on_doc=settings.fault_kill_doc_id or None,
        ),
        pause=embedder.breaker.retry_after if isinstance(embedder, OpenAIEmbedder) else None,
    )
    log.info("index %s at %s", embedder.model_id, where)
    projection = Projection(
        embedder=embedder,
        catalog=catalog,
        index=index,
        ownership=ownership,
        event_log=event_log,
        cache=cache,
        status=status,
        indexer=indexer,
        projector=projector,
        replays=ReplayJobs(
            lambda: projection.replay(),
            store=RedisReplayJobs(settings.redis_url, prefix=settings.stream_prefix),
        ),
        replay_config=ReplayConfig(batch=settings.replay_batch),
    )
    return projection


def build_embedder(settings: Settings) -> LocalEmbedder | OpenAIEmbedder:
    """The embedder RAG_EMBEDDER names; its model id and dimension name the index."""
    if settings.embedder == "openai":
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
    return LocalEmbedder(
        batch_size=settings.batch_size,
        max_concurrent_batches=settings.max_concurrent_batches,
        threads=settings.embedder_threads,
    )


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
            settings.redis_url, prefix=settings.stream_prefix, pool_size=settings.redis_pool_size
        ),
        rate_per_second=settings.rate_limit_per_second,
        burst=settings.rate_limit_burst,
    )


def build_services(settings: Settings) -> Services:
    access = build_access(settings)  # first: a bad keys file stops start-up before the model loads
    projection = build_projection(settings, "serve")
    reranker = (
        LateInteractionReranker(projection.embedder.dim)
        if projection.embedder.has_token_vectors
        else None
    )
    pipeline = Pipeline(
        projection.embedder,
        projection.index,
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
        projection.event_log,
        projection.status,
        streams=projection.projector.streams,
        index_id=projection.embedder.model_id,
        max_documents=settings.max_documents_per_request,
        wait_seconds=settings.ingest_wait_seconds,
        index=projection.index,
    )
    if not settings.projector_in_process and projection.ownership is not None:
        log.warning(
            "RAG_PROJECTOR_IN_PROCESS=false: indexing is paused. This process holds the "
            "embedded index, so no other can apply document events to it; they wait in the "
            "stream until a serve with the projector (or a worker, once this one stops) runs"
        )
    return Services(
        settings=settings,
        projection=projection,
        pipeline=pipeline,
        ingest=ingest,
        default_chunking=ChunkingParams(size=settings.chunk_size, overlap=settings.chunk_overlap),
        projector=projection.projector if settings.projector_in_process else None,
        recorder=RetrievalRecorder(
            projection.event_log,
            projection.projector.streams.retrievals,
            retention_seconds=settings.retrieval_retention_seconds,
        ),
        access=access,
        dead_letters=build_dead_letters(
            settings, projection.event_log, projection.status, projection.embedder.model_id
        ),
    )


def build_dead_letters(
    settings: Settings, event_log: RedisEventLog, status: RedisDocStatus, index_id: str
) -> DeadLetters:
    """Dead letters over these adapters, for the API and the CLI; closing its own store
    (`.store.close()`) is the caller's, the adapters stay theirs. `index_id` is the index's
    embedding model id."""
    return DeadLetters(
        event_log,
        RedisDeadLetters(
            settings.redis_url,
            written_key=status.written_key,
            applied_key=status.applied_key,
            pool_size=min(4, settings.redis_pool_size),
        ),
        status,
        streams=Streams(settings.stream_prefix),
        index_id=index_id,
    )


def build_worker(settings: Settings) -> Projection:
    # The worker's app reads the keys file in its lifespan (replays are admin work); reading
    # it here first stops a bad one before the model loads, as build_services does.
    load_keys(settings)
    return build_projection(settings, "worker")


def load_keys(settings: Settings) -> KeyRing | None:
    """The keys RAG_API_KEYS_FILE names (None: open mode); SettingsError if unusable."""
    if not settings.api_keys_file:
        return None
    return KeyRing(
        Path(settings.api_keys_file).expanduser(),
        reload_seconds=settings.api_keys_reload_seconds,
    )


def resolve_event_log(settings: Settings) -> tuple[str, EmbeddedRedis | None]:
    """REDIS_URL, or the data directory's embedded Valkey (`resolve_redis_url`), with a data
    directory that cannot hold it reported as the setting it is."""
    if not settings.redis_url:
        check_data_dir(settings, "the embedded Valkey, REDIS_URL being empty")
    return resolve_redis_url(settings)


def check_redis_url(url: str) -> None:
    """SettingsError for a REDIS_URL redis-py cannot parse (a port that is not a number, a
    bad database), which it would otherwise raise as a bare ValueError on first use."""
    if not url:
        return
    try:
        redis.ConnectionPool.from_url(url)  # parses the URL, connects nothing
    except ValueError as exc:
        # redis-py's messages name the part at fault, never the password.
        raise SettingsError(f"REDIS_URL: {exc}") from exc


def check_data_dir(settings: Settings, needed_for: str) -> Path:
    """RAG_DATA_DIR, created if missing; SettingsError if it cannot be, or is not writable."""
    path = settings.data_path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(
            f"RAG_DATA_DIR {path}: cannot create it (needed for {needed_for}): "
            f"{exc.strerror or exc}"
        ) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise SettingsError(
            f"RAG_DATA_DIR {path}: not writable by this process (needed for {needed_for})"
        )
    return path
