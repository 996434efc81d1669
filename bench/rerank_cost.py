"""What late-interaction rerank costs a search, by head size: signature fetch and MaxSim.

In process on a copy of a served data dir (stop the server first): per judged query, the
default hybrid candidates are retrieved, then the reranker's two steps are timed on the head,
in thread CPU time (the machine is shared; CPU time is what a search costs the server).

    python bench/rerank_cost.py --data-dir /tmp/scifact-copy ../shared/datasets/scifact-train
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import threadpoolctl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.adapters.embedders.local import LocalEmbedder
from app.adapters.qdrant.edge_catalog import EdgeCatalog
from app.cli.corpus import read_beir_queries, read_qrels
from app.domain.records import DEFAULT_TENANT, IndexQuery
from app.services.query import FusionWeights, fuse
from app.services.reranking import LateInteractionReranker


async def measure(data_dir: Path, dataset: Path, heads: list[int], limit: int) -> None:
    embedder = LocalEmbedder(batch_size=32, max_concurrent_batches=1, threads=0)
    index = EdgeCatalog(data_dir, model_id=embedder.model_id, dim=embedder.dim).current()
    reranker = LateInteractionReranker(embedder.dim)
    queries = read_beir_queries(dataset / "queries.jsonl")
    qrels = read_qrels(dataset / "qrels" / "train.tsv")
    judged = [queries[qid] for qid in sorted(qrels) if qid in queries][:limit]
    fetch: dict[int, list[float]] = {h: [] for h in heads}
    score: dict[int, list[float]] = {h: [] for h in heads}
    size: dict[int, list[int]] = {h: [] for h in heads}
    try:
        for text in judged:
            query = await embedder.embed_query(text)
            hits = await index.retrieve(
                IndexQuery(
                    tenant=DEFAULT_TENANT,
                    text=text,
                    vector=query.vector,
                    limit=max(heads),
                    dense=True,
                    bm25=True,
                )
            )
            hits = fuse(hits, "hybrid", FusionWeights())
            for h in heads:
                head = hits[:h]
                ids = [x.chunk_id for x in head]
                t0 = time.thread_time()
                signatures = index._token_signatures(ids)  # the engine call, on this thread
                t1 = time.thread_time()
                for x in head:
                    x.token_signature = signatures.get(x.chunk_id)
                reranker.scores(query, head)
                t2 = time.thread_time()
                fetch[h].append((t1 - t0) * 1000)
                score[h].append((t2 - t1) * 1000)
                size[h].append(sum(len(s) for s in signatures.values()))
    finally:
        index.close()
        embedder.close()
    print(f"{len(judged)} queries; thread CPU ms, median (p90)")
    print(f"{'head':>5} {'fetch':>14} {'maxsim':>14} {'KB fetched':>11}")
    for h in heads:
        f, s = sorted(fetch[h]), sorted(score[h])
        print(
            f"{h:>5} {statistics.median(f):>6.2f} ({f[int(0.9 * len(f))]:>5.2f}) "
            f"{statistics.median(s):>6.2f} ({s[int(0.9 * len(s))]:>5.2f}) "
            f"{statistics.fmean(size[h]) / 1024:>11.0f}"
        )


def main() -> int:
    # As the serving process does (app.bootstrap.index_side): OpenBLAS's spinning workers
    # would otherwise triple MaxSim's CPU time on a busy 2-core machine.
    threadpoolctl.threadpool_limits(1, user_api="blas")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--heads", default="10,15,20,30")
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args()
    heads = [int(h) for h in args.heads.split(",")]
    asyncio.run(measure(args.data_dir, args.dataset, heads, args.limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
