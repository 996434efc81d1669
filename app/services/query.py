"""The query spine: embed -> retrieve -> fuse -> min score -> rerank -> MMR -> top k."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import msgspec
import numpy as np
from opentelemetry.trace import Span

from app.domain.records import EncodedQuery, FieldFilter, Hit, IndexQuery, SearchMode
from app.ports import Embedder, Reranker, VectorIndex
from app.retrieval.fusion import (
    minmax,
    reciprocal_ranks,
    stable_order,
    weighted_sum,
    with_siblings,
)
from app.retrieval.mmr import mmr_select
from app.services.recorder import new_retrieval_id
from app.telemetry import schema as t
from app.telemetry import tracing


class FusionWeights(msgspec.Struct, frozen=True, kw_only=True):
    """How stage scores combine; chosen by cross-validation on SciFact (docs/benchmarks.md)."""

    dense: float = 0.5
    bm25: float = 0.5
    # Share of the final score given to late interaction when reranking.
    rerank: float = 0.5
    # "minmax": convex weights of min-max normalised scores; "rrf": of reciprocal ranks.
    normalise: Literal["minmax", "rrf"] = "minmax"
    rrf_k: int = 60
    # Share of a document's other candidate chunks' fused scores added to each of its chunks
    # (app.retrieval.fusion.with_siblings); 0 ranks a document by its best chunk alone.
    siblings: float = 0.0


class PipelineConfig(msgspec.Struct, frozen=True, kw_only=True):
    default_top_k: int
    default_min_score: float
    rerank_by_default: bool
    rerank_top_k: int
    mmr_max_candidates: int
    weights: FusionWeights = FusionWeights()
    trace_query_text: bool = False  # RAG_TRACE_QUERY_TEXT: the query in the rag.search span


class SearchParams(msgspec.Struct, frozen=True, kw_only=True):
    query: str
    tenant: str
    top_k: int | None = None
    mode: SearchMode = "hybrid"
    filters: list[FieldFilter] = msgspec.field(default_factory=list)
    min_score: float | None = None
    diversity: float = 0.0
    rerank: bool | None = None


class SearchOutcome(msgspec.Struct, kw_only=True):
    retrieval_id: str
    hits: list[Hit]
    reranked: bool
    timings_ms: dict[str, float]
    rerank_skipped: str | None = None  # why a rerank that was asked for did not run


class Pipeline:
    """Everything a search needs, wired once at start-up."""

    def __init__(
        self,
        embedder: Embedder,
        index: VectorIndex,
        reranker: Reranker | None,
        config: PipelineConfig,
    ) -> None:
        self.embedder = embedder
        self.index = index
        self.reranker = reranker
        self.config = config

    async def search(self, params: SearchParams) -> SearchOutcome:
        clock = _Clock()
        (query,) = await self._embed([params.query], clock)
        return await self._search_embedded(params, query, clock)

    async def search_many(self, batch: Sequence[SearchParams]) -> list[SearchOutcome]:
        """Several searches, their queries embedded in one batch, then each run on its own,
        concurrently; outcomes in input order. Each one's `embed` timing (and its total,
        which counts from the batch's start) includes the whole batch's embedding."""
        clock = _Clock()
        queries = await self._embed([p.query for p in batch], clock)
        running = [
            asyncio.ensure_future(self._search_embedded(p, q, clock.copy()))
            for p, q in zip(batch, queries, strict=True)
        ]
        try:
            return list(await asyncio.gather(*running))
        finally:
            for task in running:  # one failed: the rest are of no use
                task.cancel()

    async def _embed(self, texts: list[str], clock: _Clock) -> list[EncodedQuery]:
        with clock.stage("embed") as span:
            if span.is_recording():
                # Query embeddings are not cached (the embedder batches concurrent queries).
                span.set_attributes(
                    {t.MODEL: self.embedder.model_id, t.BATCH_SIZE: len(texts), t.CACHE: "off"}
                )
            if len(texts) == 1:
                return [await self.embedder.embed_query(texts[0])]
            return await self.embedder.embed_queries(texts)

    async def _search_embedded(
        self, params: SearchParams, query: EncodedQuery, clock: _Clock
    ) -> SearchOutcome:
        cfg = self.config
        top_k = params.top_k or cfg.default_top_k
        min_score = cfg.default_min_score if params.min_score is None else params.min_score
        wants_rerank = cfg.rerank_by_default if params.rerank is None else params.rerank
        rerank = self.reranker is not None and wants_rerank
        skipped = None
        if wants_rerank and self.reranker is None:
            skipped = (
                f"the index's embedder ({self.embedder.model_id}) gives no token vectors, "
                "which late-interaction rerank needs"
            )

        with clock.stage("search") as span:
            limit = candidate_pool(top_k, rerank, params.diversity, cfg)
            hits = await self.index.retrieve(
                IndexQuery(
                    tenant=params.tenant,
                    text=params.query,
                    vector=query.vector,
                    limit=limit,
                    dense=params.mode != "bm25",
                    bm25=params.mode != "dense",
                    filters=params.filters,
                )
            )
            if params.mode == "bm25":
                # BM25 decides membership; cosines are still computed so min_score means
                # the same thing in every mode.
                hits = [h for h in hits if h.bm25 is not None]
            if span.is_recording():
                span.set_attributes(
                    {
                        t.TENANT: params.tenant,
                        t.MODE: params.mode,
                        t.LIMIT: limit,
                        t.CANDIDATES: len(hits),
                        t.FILTERS: len(params.filters),
                        **({t.QUERY_TEXT: params.query} if cfg.trace_query_text else {}),
                    }
                )

        with clock.stage("fusion") as span:
            candidates = len(hits)
            hits = fuse(hits, params.mode, cfg.weights)
            hits = [h for h in hits if h.dense >= min_score]
            if span.is_recording():
                span.set_attributes(
                    {
                        t.MODE: params.mode,
                        t.CANDIDATES: candidates,
                        t.KEPT: len(hits),
                        t.MIN_SCORE: min_score,
                    }
                )

        if rerank and hits and self.reranker is not None:
            with clock.stage("rerank") as span:
                span.set_attributes(
                    {t.RERANKER: self.reranker.name, t.RERANKED: min(len(hits), cfg.rerank_top_k)}
                )
                head = hits[: cfg.rerank_top_k]
                signatures = await self.index.token_signatures([h.chunk_id for h in head])
                for h in head:
                    h.token_signature = signatures.get(h.chunk_id)
                late = self.reranker.scores(query, head)
                hits = rescore(head, late, params.mode, cfg.weights) + hits[cfg.rerank_top_k :]

        if params.diversity > 0 and len(hits) > 1:
            with clock.stage("mmr") as span:
                pool = hits[: self.config.mmr_max_candidates]
                span.set_attributes({t.DIVERSITY: params.diversity, t.POOL: len(pool)})
                vectors = await self.index.vectors([h.chunk_id for h in pool])
                for h in pool:
                    h.vector = vectors[h.chunk_id]
                hits = diversify(pool, top_k, params.diversity)

        hits = hits[:top_k]
        await self.index.hydrate(hits)
        for h in hits:
            h.token_signature = None
            h.vector = None
        return SearchOutcome(
            retrieval_id=new_retrieval_id(),
            hits=hits,
            reranked=rerank,
            timings_ms=clock.finish(),
            rerank_skipped=skipped,
        )


def candidate_pool(top_k: int, rerank: bool, diversity: float, cfg: PipelineConfig) -> int:
    """How many candidates each retriever returns: enough for rerank and for MMR to choose."""
    pool = top_k
    if rerank:
        pool = max(pool, cfg.rerank_top_k)
    if diversity > 0:
        pool = max(pool, cfg.mmr_max_candidates, top_k + 1)
    return pool


def fuse(hits: list[Hit], mode: SearchMode, weights: FusionWeights) -> list[Hit]:
    """Score each candidate from its stage scores and order them; ties go to the chunk id."""
    dense: list[float | None] = [h.dense for h in hits]
    bm25 = [h.bm25 for h in hits]
    if weights.normalise == "rrf":
        keys = [h.chunk_id for h in hits]
        dense_n = reciprocal_ranks(dense, keys, weights.rrf_k)
        bm25_n = reciprocal_ranks(bm25, keys, weights.rrf_k)
    else:
        dense_n, bm25_n = minmax(dense), minmax(bm25)
    if mode == "dense":
        fused = dense_n
    elif mode == "bm25":
        fused = bm25_n
    else:
        fused = weighted_sum(
            {"dense": dense_n, "bm25": bm25_n},
            {"dense": weights.dense, "bm25": weights.bm25},
        )
    if weights.siblings:
        # A hit whose document is not known yet stands alone.
        fused = with_siblings(fused, [h.doc_id or h.chunk_id for h in hits], weights.siblings)
    for h, score in zip(hits, fused, strict=True):
        h.scores = {"dense": h.dense, "bm25": h.bm25 or 0.0, "fusion": score}
        h.score = score
    return _ordered(hits)


def rescore(
    hits: list[Hit], late: Sequence[float], mode: SearchMode, weights: FusionWeights
) -> list[Hit]:
    """Blend late-interaction scores into the fused scores of the reranked head."""
    late_n = minmax(list(late))
    first_stage = minmax([h.scores["fusion"] for h in hits])
    final = weighted_sum(
        {"first": first_stage, "late": late_n},
        {"first": 1.0 - weights.rerank, "late": weights.rerank},
    )
    for h, late_score, score in zip(hits, late, final, strict=True):
        h.scores["rerank"] = float(late_score)
        h.score = score
    return _ordered(hits)


def diversify(hits: list[Hit], top_k: int, diversity: float) -> list[Hit]:
    relevance = np.asarray([h.score for h in hits], dtype=np.float32)
    vectors = np.stack([h.vector for h in hits if h.vector is not None])
    chosen = mmr_select(relevance, vectors, min(top_k, len(hits)), diversity)
    out = [hits[i] for i in chosen]
    for rank, h in enumerate(out):
        h.scores["mmr"] = float(rank)
    return out


def _ordered(hits: list[Hit]) -> list[Hit]:
    order = stable_order([h.score for h in hits], [h.chunk_id for h in hits])
    return [hits[i] for i in order]


class _Clock:
    """Wall time per stage, in milliseconds, plus the total."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.stages: dict[str, float] = {}

    def copy(self) -> _Clock:
        """A clock with the same start and the stages so far, to go on separately."""
        twin = _Clock()
        twin.started, twin.stages = self.started, dict(self.stages)
        return twin

    @contextmanager
    def stage(self, name: str) -> Iterator[Span]:
        t0 = time.perf_counter()
        try:
            with tracing.stage(name) as span:  # the span rag.<name>, and its histogram
                yield span
        finally:
            self.stages[name] = round((time.perf_counter() - t0) * 1000, 3)

    def finish(self) -> dict[str, float]:
        self.stages["total"] = round((time.perf_counter() - self.started) * 1000, 3)
        return self.stages
