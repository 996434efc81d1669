"""Opens (or creates) an Edge shard with the index's schema: vectors, HNSW, payload indexes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from app.adapters.qdrant.payload import DENSE, SEARCH_TEXT

# Points not yet in the HNSW graph that make the background optimizer run.
OPTIMIZE_AFTER_UNINDEXED = 2000

_KEYWORD_FIELDS = ("tenant", "doc_id", "version")
_INDEX_KINDS: dict[str, Callable[[], Any]] = {
    "keyword": lambda: qe.KeywordIndexParams(),
    "integer": lambda: qe.IntegerIndexParams(lookup=True, range=True),
    "float": lambda: qe.FloatIndexParams(),
    "bool": lambda: qe.BoolIndexParams(),
}


def text_index_params() -> qe.TextIndexParams:
    """English word tokenizer with Snowball stemming and stop words, scored by BM25.

    Chosen on SciFact (docs/benchmarks.md): stemming and stop-word removal each add to
    BM25's nDCG@10 over a plain lowercase word tokenizer.
    """
    return qe.TextIndexParams(
        tokenizer=qe.TokenizerType.Word,
        lowercase=True,
        ascii_folding=True,
        stemmer=qe.SnowballParams(qe.SnowballLanguage.English),
        stopwords=qe.Language.English,
        min_token_len=1,
        max_token_len=40,
        scoring=True,
        enable_hnsw=False,
    )


def open_shard(
    path: Path, *, dim: int, metadata_indexes: Mapping[str, str], search_threads: int | None
) -> qe.EdgeShard:
    """The shard at `path`, created if the directory is empty; missing payload indexes are
    added (a metadata field indexed since the shard was made)."""
    config = qe.EdgeConfig(
        vectors={DENSE: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)},
        # ef_construct 64 rather than 128: the HNSW build of a SciFact replay takes ~1 CPU s
        # less (of ~4.5), and SciFact's hybrid and reranked nDCG@10 were unchanged (dense
        # 0.6780 vs 0.6792, within build-to-build spread); docs/benchmarks.md, "Replay".
        hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=64, full_scan_threshold=1_000),
        # Qdrant's default waits for 10 MB of vectors per segment before building HNSW,
        # which a corpus of SciFact's size never reaches; index once ~2,000 vectors wait.
        optimizers=qe.EdgeOptimizersConfig(
            indexing_threshold=max(1, OPTIMIZE_AFTER_UNINDEXED * dim * 4 // 1024)
        ),
        max_search_threads=search_threads,
        # Payload is read for the returned hits and rerank candidates only: no reason to
        # keep all of it (token signatures are most of it) resident.
        payload_memory=qe.Memory.Cold,
    )
    path.mkdir(parents=True, exist_ok=True)
    has_segments = any(path.iterdir())
    shard = (
        qe.EdgeShard.load(str(path), config)
        if has_segments
        else qe.EdgeShard.create(str(path), config)
    )
    existing = shard.info().payload_schema
    # Qdrant adds HNSW links per value of every payload index with enable_hnsw (per
    # frequent token, for a text index), for filtered dense search. Only the tenant and
    # metadata filters shape dense searches; the text index serves BM25 by itself and
    # doc_id/version/chunk_index serve lookups and deletes. With the links, building
    # HNSW for SciFact's 10k chunks took 32 s instead of 11 s.
    wanted: dict[str, Any] = {
        field: qe.KeywordIndexParams(enable_hnsw=False) for field in _KEYWORD_FIELDS
    }
    wanted["tenant"] = qe.KeywordIndexParams(is_tenant=True)
    wanted["chunk_index"] = qe.IntegerIndexParams(lookup=True, range=False, enable_hnsw=False)
    wanted[SEARCH_TEXT] = text_index_params()
    for field, kind in metadata_indexes.items():
        wanted[f"metadata.{field}"] = _INDEX_KINDS[kind]()
    for field, params in wanted.items():
        if field not in existing:
            shard.update(qe.UpdateOperation.create_field_index(field, params))
    return shard
