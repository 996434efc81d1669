"""Runs a BEIR dataset's queries through the HTTP API and scores the rankings."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from tqdm import tqdm

from app.cli.corpus import read_beir_corpus, read_beir_queries, read_qrels
from app.client import Client
from app.retrieval.metrics import dedupe, mrr_at_k, ndcg_at_k, recall_at_k


class Variant(msgspec.Struct, frozen=True):
    label: str
    params: dict[str, Any]


DEFAULT_VARIANTS = (
    Variant("dense", {"mode": "dense", "rerank": False}),
    Variant("bm25", {"mode": "bm25", "rerank": False}),
    Variant("hybrid", {"mode": "hybrid", "rerank": False}),
    Variant("hybrid+rerank", {"mode": "hybrid", "rerank": True}),
)


class Scores(msgspec.Struct, frozen=True):
    label: str
    ndcg_at_10: float
    recall_at_100: float
    mrr_at_10: float
    queries: int
    p50_ms: float


async def ensure_corpus(client: Client, dataset: Path, batch: int = 64) -> int:
    """Ingest the corpus unless the index already holds it (checked on a sample of ids)."""
    docs = list(read_beir_corpus(dataset / "corpus.jsonl"))
    sample = docs[:: max(1, len(docs) // 20)]
    present = await asyncio.gather(*(client.document(d.id) for d in sample))
    if all(present):
        return 0
    with tqdm(total=len(docs), desc="ingest", unit="doc") as bar:
        for start in range(0, len(docs), batch):
            part = docs[start : start + batch]
            await client.ingest(part)
            bar.update(len(part))
    return len(docs)


async def evaluate(
    client: Client,
    dataset: Path,
    variants: Sequence[Variant] = DEFAULT_VARIANTS,
    *,
    split: str = "train",
    concurrency: int = 4,
    limit: int | None = None,
) -> list[Scores]:
    queries = read_beir_queries(dataset / "queries.jsonl")
    qrels = read_qrels(dataset / "qrels" / f"{split}.tsv")
    judged = [(qid, queries[qid]) for qid in sorted(qrels) if qid in queries][:limit]
    out = []
    for variant in variants:
        gate = asyncio.Semaphore(concurrency)

        async def run(
            query: str, params: dict[str, Any] = variant.params, gate: asyncio.Semaphore = gate
        ) -> tuple[list[str], float]:
            async with gate:
                response = await client.search(query, top_k=100, **params)
            return [r.doc_id for r in response.results], response.timings_ms.get("total", 0.0)

        ranked: list[tuple[list[str], float]] = []
        tasks = [asyncio.ensure_future(run(text)) for _, text in judged]
        for task in tqdm(tasks, desc=variant.label, unit="q", leave=False):
            ranked.append(await task)
        ndcg, recall, mrr = [], [], []
        for (qid, _), (docs, _) in zip(judged, ranked, strict=True):
            docs = dedupe(docs)
            ndcg.append(ndcg_at_k(docs, qrels[qid], 10))
            recall.append(recall_at_k(docs, qrels[qid], 100))
            mrr.append(mrr_at_k(docs, qrels[qid], 10))
        out.append(
            Scores(
                label=variant.label,
                ndcg_at_10=statistics.fmean(ndcg),
                recall_at_100=statistics.fmean(recall),
                mrr_at_10=statistics.fmean(mrr),
                queries=len(judged),
                p50_ms=statistics.median(t for _, t in ranked),
            )
        )
    return out


def format_table(scores: Sequence[Scores]) -> str:
    lines = [
        f"{'variant':<26} {'nDCG@10':>8} {'R@100':>8} {'MRR@10':>8} {'queries':>8} {'p50 ms':>8}",
        "-" * 72,
    ]
    for s in scores:
        lines.append(
            f"{s.label:<26} {s.ndcg_at_10:>8.4f} {s.recall_at_100:>8.4f} {s.mrr_at_10:>8.4f} "
            f"{s.queries:>8d} {s.p50_ms:>8.1f}"
        )
    return "\n".join(lines)
