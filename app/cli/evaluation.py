"""`rag-pipeline eval`: run a BEIR dataset's queries through the HTTP API, score the rankings."""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from app.cli.corpus import read_beir_corpus, read_beir_queries, read_qrels
from app.cli.options import SERVER_URL_HELP, add_api_key_file, connect
from app.retrieval.metrics import dedupe, mrr_at_k, ndcg_at_k, recall_at_k
from app.settings import Settings

if TYPE_CHECKING:
    from app.client import AsyncClient

log = logging.getLogger("rag_pipeline")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `eval` to the command's subparsers."""
    ev = sub.add_parser("eval", help="score a BEIR dataset through the HTTP API")
    ev.add_argument("dataset", type=Path, help="folder with corpus.jsonl, queries.jsonl, qrels/")
    ev.add_argument("--url", default=None, help=SERVER_URL_HELP)
    ev.add_argument("--split", default="train", help="qrels file name without .tsv")
    ev.add_argument("--limit", type=int, default=None, help="only the first N judged queries")
    ev.add_argument("--json", action="store_true", help="print the scores as JSON")
    ev.add_argument(
        "--diversity",
        type=float,
        action="append",
        default=[],
        help="also score the default pipeline with MMR at this diversity (repeatable)",
    )
    ev.add_argument("--only-diversity", action="store_true", help="skip the four mode variants")
    add_api_key_file(ev)
    ev.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace, settings: Settings) -> int:
    async def run() -> int:
        async with connect(args, settings) as server:
            loaded = await ensure_corpus(server, args.dataset)
            if loaded:
                log.info("ingested %d documents", loaded)
            variants = [] if args.only_diversity else list(DEFAULT_VARIANTS)
            variants += [
                Variant(f"default, diversity={d:g}", {"diversity": d}) for d in args.diversity
            ]
            scores = await evaluate(
                server, args.dataset, variants, split=args.split, limit=args.limit
            )
        if args.json:
            print(msgspec.json.encode(scores).decode())
        else:
            print(format_table(scores))
        return 0

    return asyncio.run(run())


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


async def ensure_corpus(client: AsyncClient, dataset: Path, batch: int = 64) -> int:
    """Ingest the corpus unless the index already holds it (checked on a sample of ids)."""
    from tqdm import tqdm

    from app.client import NotFoundError, send_batches

    async def present(doc_id: str) -> bool:
        try:
            await client.document(doc_id)
        except NotFoundError:
            return False
        return True

    docs = list(read_beir_corpus(dataset / "corpus.jsonl"))
    sample = docs[:: max(1, len(docs) // 20)]
    if all(await asyncio.gather(*(present(d.id) for d in sample))):
        return 0
    with tqdm(total=len(docs), desc="ingest", unit="doc") as bar:
        await send_batches(
            client, docs, batch, in_flight=1, on_done=lambda _, sent: bar.update(sent)
        )
    return len(docs)


async def evaluate(
    client: AsyncClient,
    dataset: Path,
    variants: Sequence[Variant] = DEFAULT_VARIANTS,
    *,
    split: str = "train",
    concurrency: int = 4,
    limit: int | None = None,
) -> list[Scores]:
    from tqdm import tqdm

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
