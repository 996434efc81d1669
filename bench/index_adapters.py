"""In-process search latency of the two index adapters on the same small SciFact corpus, and
how far the cluster adapter's fixed BM25 length normalisation moves the top 10.

Embeds --docs SciFact documents once, writes them to Qdrant Edge (temp dir) and to the cluster
adapter in qdrant-client's local mode (twice: with the corpus's measured mean length and with
the default DEFAULT_AVG_LEN), then runs --queries queries through the Pipeline (hybrid, top 10,
no rerank), interleaving the adapters, --runs times. Reports the median of the per-run p50s of
the index stage alone (`search` timing) and of the whole search, and the mean top-10 overlap.

    python bench/index_adapters.py [--docs 500] [--queries 100] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.adapters.embedders.local import LocalEmbedder  # noqa: E402
from app.adapters.qdrant.edge_index import EdgeIndex  # noqa: E402
from app.adapters.qdrant.remote_index import QdrantIndex  # noqa: E402
from app.adapters.qdrant.sparse_bm25 import DEFAULT_AVG_LEN  # noqa: E402
from app.cli.corpus import read_beir_queries  # noqa: E402
from app.services.query import Pipeline, PipelineConfig, SearchParams  # noqa: E402
from tests.conftest import SCIFACT  # noqa: E402
from tests.integration.test_index_congruence import FanOut, planned_sample  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    data = Path(args.scifact)
    embedder = LocalEmbedder(batch_size=32, max_concurrent_batches=1, threads=0)
    queries = list(read_beir_queries(data / "queries.jsonl").values())[: args.queries]
    docs, chunks, mean_len = planned_sample(data, args.docs, embedder)
    edge = EdgeIndex(Path(tempfile.mkdtemp()), model_id="m", dim=embedder.dim)
    exact = QdrantIndex.connect(":memory:", model_id="m", dim=embedder.dim, bm25_avg_len=mean_len)
    default = QdrantIndex.connect(":memory:", model_id="m", dim=embedder.dim)
    await FanOut(edge, exact, default).write(embedder, chunks)
    config = PipelineConfig(
        default_top_k=10,
        default_min_score=-1.0,
        rerank_by_default=False,
        rerank_top_k=30,
        mmr_max_candidates=100,
    )
    names = {"edge": edge, "local": exact, "local-default-len": default}
    pipes = {name: Pipeline(embedder, index, None, config) for name, index in names.items()}
    stage: dict[str, list[float]] = {n: [] for n in names}
    total: dict[str, list[float]] = {n: [] for n in names}
    overlap: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.runs):
        runs: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        for text in queries:
            tops: dict[str, set[str]] = {}
            for name, pipe in pipes.items():
                out = await pipe.search(SearchParams(query=text, tenant="t", mode=args.mode))
                runs[name].append((out.timings_ms["search"], out.timings_ms["total"]))
                tops[name] = {h.chunk_id for h in out.hits}
            for name in names:
                overlap[name].append(len(tops[name] & tops["edge"]) / max(1, len(tops["edge"])))
        for name in names:
            stage[name].append(statistics.median(s for s, _ in runs[name]))
            total[name].append(statistics.median(t for _, t in runs[name]))
    print(f"{len(docs)} documents, {len(chunks)} chunks, mean BM25 length {mean_len:.1f} ")
    print(f"(default {DEFAULT_AVG_LEN}), {len(queries)} queries x {args.runs} runs, {args.mode}")
    for name in names:
        print(
            f"{name:18s} index p50 {statistics.median(stage[name]):6.2f} ms   "
            f"search p50 {statistics.median(total[name]):6.2f} ms   "
            f"top-10 overlap with edge {statistics.mean(overlap[name]):.3f}"
        )
    edge.close()
    await exact.aclose()
    await default.aclose()
    embedder.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mode", default="hybrid", choices=["dense", "bm25", "hybrid"])
    parser.add_argument("--scifact", default=str(SCIFACT))
    asyncio.run(main(parser.parse_args()))
