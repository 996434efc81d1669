"""Grid-search fusion and rerank weights on a BEIR dataset, with the pipeline's own scoring code.

Candidates (dense and BM25 pools with exact scores, plus late-interaction scores) are
retrieved once per query from an index built by `rag-pipeline serve` + `ingest`; every weight
setting is then scored offline through app.services.query.fuse/rescore, so what is measured is what
serves. Stop the server first (the Edge shard is opened here).

    python bench/tune_fusion.py --data-dir /tmp/scifact-data ../shared/datasets/scifact-train
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import qdrant_edge as qe

from app.adapters.embedders.local import LocalEmbedder
from app.adapters.qdrant.edge_catalog import EdgeCatalog
from app.adapters.qdrant.payload import SEARCH_TEXT
from app.cli.corpus import read_beir_queries, read_qrels
from app.domain.records import DEFAULT_TENANT, EncodedQuery, Hit, IndexQuery
from app.retrieval.metrics import dedupe, ndcg_at_k, recall_at_k
from app.services.query import FusionWeights, fuse, rescore
from app.services.reranking import LateInteractionReranker


def text_index_variant(name: str) -> qe.TextIndexParams:
    """The serving text index, or one of the alternatives it was chosen over."""
    stem = qe.SnowballParams(qe.SnowballLanguage.English)
    variants = {
        "stem+stop": dict(stemmer=stem, stopwords=qe.Language.English),
        "stem": dict(stemmer=stem),
        "stop": dict(stopwords=qe.Language.English),
        "plain": {},
    }
    return qe.TextIndexParams(
        tokenizer=qe.TokenizerType.Word,
        lowercase=True,
        ascii_folding=True,
        min_token_len=1,
        max_token_len=40,
        scoring=True,
        **variants[name],
    )


async def collect(
    data_dir: Path, dataset: Path, pool: int, limit: int | None, text_index: str
) -> list[tuple[str, list[Hit], EncodedQuery]]:
    embedder = LocalEmbedder(batch_size=32, max_concurrent_batches=1, threads=0)
    # The active generation: after a replay that is no longer the shard at index/<model>.
    index = EdgeCatalog(data_dir, model_id=embedder.model_id, dim=embedder.dim).current()
    if text_index != "serving":
        # Rebuilds only the text index, on this (copied!) shard: no re-embedding needed.
        shard = index._shard  # a benchmark reaching into its own adapter
        shard.update(qe.UpdateOperation.delete_field_index(SEARCH_TEXT))
        shard.update(
            qe.UpdateOperation.create_field_index(SEARCH_TEXT, text_index_variant(text_index))
        )
    reranker = LateInteractionReranker(embedder.dim)
    queries = read_beir_queries(dataset / "queries.jsonl")
    qrels = read_qrels(dataset / "qrels" / "train.tsv")
    judged = [(qid, queries[qid]) for qid in sorted(qrels) if qid in queries][:limit]
    out = []
    try:
        for n, (qid, text) in enumerate(judged):
            query = await embedder.embed_query(text)
            hits = await index.retrieve(
                IndexQuery(
                    tenant=DEFAULT_TENANT,
                    text=text,
                    vector=query.vector,
                    limit=pool,
                    dense=True,
                    bm25=True,
                )
            )
            await index.hydrate(hits)
            signatures = await index.token_signatures([h.chunk_id for h in hits])
            for h in hits:
                h.token_signature = signatures.get(h.chunk_id)
            late = reranker.scores(query, hits)
            for h, score in zip(hits, late, strict=True):
                h.scores = {"late": score}
            out.append((qid, hits, query))
            if n % 100 == 0:
                print(f"  collected {n}/{len(judged)}", file=sys.stderr)
    finally:
        index.close()
        embedder.close()
    return out


def evaluate(
    data: list[tuple[str, list[Hit], EncodedQuery]],
    qrels: dict[str, dict[str, int]],
    mode: str,
    weights: FusionWeights,
    rerank_top_k: int | None,
) -> tuple[float, float]:
    ndcgs, recalls = [], []
    for qid, pool, _ in data:
        hits = [copy.copy(h) for h in pool]
        late = {h.chunk_id: h.scores["late"] for h in hits}
        if mode == "bm25":
            hits = [h for h in hits if h.bm25 is not None]
        hits = fuse(hits, mode, weights)  # type: ignore[arg-type]
        if rerank_top_k:
            head = hits[:rerank_top_k]
            hits = (
                rescore(head, [late[h.chunk_id] for h in head], mode, weights) + hits[rerank_top_k:]
            )
        docs = dedupe([h.doc_id for h in hits])
        ndcgs.append(ndcg_at_k(docs, qrels[qid], 10))
        recalls.append(recall_at_k(docs, qrels[qid], 100))
    return statistics.fmean(ndcgs), statistics.fmean(recalls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--pool", type=int, default=100)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument(
        "--text-index",
        default="serving",
        choices=["serving", "stem+stop", "stem", "stop", "plain"],
        help="rebuild the BM25 text index this way first (modifies DATA_DIR: use a copy)",
    )
    parser.add_argument("--bm25-only", action="store_true", help="skip the weight grid")
    args = parser.parse_args()
    qrels = read_qrels(args.dataset / "qrels" / "train.tsv")
    data = asyncio.run(collect(args.data_dir, args.dataset, args.pool, args.limit, args.text_index))

    def show(label: str, result: tuple[float, float]) -> None:
        print(f"{label:<48} nDCG@10 {result[0]:.4f}  R@100 {result[1]:.4f}")

    show("dense", evaluate(data, qrels, "dense", FusionWeights(), None))
    show("bm25", evaluate(data, qrels, "bm25", FusionWeights(), None))
    if args.bm25_only:
        show("hybrid 0.5/0.5", evaluate(data, qrels, "hybrid", FusionWeights(), None))
        return 0
    best = (0.0, 0.5)
    for w in np.arange(0.2, 0.81, 0.05):
        result = evaluate(data, qrels, "hybrid", FusionWeights(dense=w, bm25=1 - w), None)
        show(f"hybrid dense={w:.2f}", result)
        best = max(best, (result[0], float(w)))
    w_dense = best[1]
    print(f"best hybrid dense weight {w_dense:.2f}")
    for top in (20, 30, 50, 100):
        for r in np.arange(0.2, 0.81, 0.1):
            weights = FusionWeights(dense=w_dense, bm25=1 - w_dense, rerank=float(r))
            show(
                f"hybrid+rerank top={top} rerank={r:.1f}",
                evaluate(data, qrels, "hybrid", weights, top),
            )
    for r in (0.3, 0.5, 0.7):
        show(
            f"dense+rerank top=50 rerank={r:.1f}",
            evaluate(data, qrels, "dense", FusionWeights(rerank=r), 50),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
