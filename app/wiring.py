"""Builds the adapters and services the settings call for, and closes them in reverse order."""

from __future__ import annotations

import logging

import msgspec
import threadpoolctl

from app.adapters.edge_index import EdgeIndex
from app.adapters.local_embedder import LocalEmbedder
from app.domain import ChunkingParams
from app.indexing import Indexer
from app.ingest import DirectIngest
from app.pipeline import Pipeline, PipelineConfig
from app.ports import Embedder
from app.reranking import LateInteractionReranker
from app.settings import Settings

log = logging.getLogger(__name__)


class Services(msgspec.Struct, kw_only=True):
    settings: Settings
    embedder: Embedder
    index: EdgeIndex
    pipeline: Pipeline
    ingest: DirectIngest
    default_chunking: ChunkingParams

    def close(self) -> None:
        self.index.close()
        self.embedder.close()


def build_services(settings: Settings) -> Services:
    # The BLAS products here (rerank, MMR) are small; OpenBLAS's worker threads keep spinning
    # after each one and take the cores the embedder needs next: measured, one thread cut
    # search p50 from 59 ms to 32 ms with rerank on.
    threadpoolctl.threadpool_limits(1, user_api="blas")
    embedder = LocalEmbedder(
        batch_size=settings.batch_size,
        max_concurrent_batches=settings.max_concurrent_batches,
        threads=settings.embedder_threads,
    )
    try:
        index = EdgeIndex(
            settings.data_path,
            model_id=embedder.model_id,
            dim=embedder.dim,
            metadata_indexes=settings.metadata_index_fields(),
        )
    except Exception:
        embedder.close()
        raise
    reranker = LateInteractionReranker(embedder.dim) if embedder.has_token_vectors else None
    pipeline = Pipeline(
        embedder,
        index,
        reranker,
        PipelineConfig(
            default_top_k=settings.top_k,
            default_min_score=settings.min_score,
            rerank_by_default=settings.rerank,
            rerank_top_k=settings.rerank_top_k,
            mmr_max_candidates=settings.mmr_max_candidates,
        ),
    )
    ingest = DirectIngest(
        Indexer(embedder, index), max_documents=settings.max_documents_per_request
    )
    log.info("index %s at %s", embedder.model_id, index.path)
    return Services(
        settings=settings,
        embedder=embedder,
        index=index,
        pipeline=pipeline,
        ingest=ingest,
        default_chunking=ChunkingParams(size=settings.chunk_size, overlap=settings.chunk_overlap),
    )
