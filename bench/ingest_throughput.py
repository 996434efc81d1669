"""Ingest throughput over HTTP against the embedder's raw throughput on the same chunks.

Both sides warm, same batches. Raw: one in-process local embedder, warmed up on other texts,
embeds the exact chunk texts ingest would produce for the first --docs SciFact documents,
one call per group of --batch documents (the unit ingest requests and the projector embed),
and, for reference, in one call for all (sorted by length across the whole set, so it pads
least). Ingest: per run a fresh `rag-pipeline serve` (fresh index, empty embedding cache),
warmed up by ingesting --warm other documents, then receives the measured documents through
`POST /api/v1/ingest?wait=true` in requests of --batch, two in flight. Each runs --runs
times; medians reported.

    python bench/ingest_throughput.py [--docs 300] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.adapters.embedders.local import LocalEmbedder  # noqa: E402
from app.cli.corpus import read_beir_corpus  # noqa: E402
from app.client import AsyncClient, send_batches  # noqa: E402
from app.domain.records import ChunkingParams, DocumentIn  # noqa: E402
from app.services.indexing import Indexer, document_version  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.conftest import SCIFACT  # noqa: E402
from tests.e2e.server import Server  # noqa: E402

DATASET = SCIFACT


def measure(
    groups: list[list[str]],
    warm: list[str],
    settings: Settings,
    docs: list,
    warm_docs: list,
    batch: int,
    runs: int,
) -> tuple[list[float], list[float], list[float]]:
    """Chunks/s per run: raw group by group, raw in one call (one warm embedder), and
    ingest; the three interleaved run by run, so load from other work hits all of them."""
    embedder = LocalEmbedder(
        batch_size=settings.batch_size,
        max_concurrent_batches=settings.max_concurrent_batches,
        threads=settings.embedder_threads,
    )
    texts = [t for g in groups for t in g]

    async def run_all() -> tuple[list[float], list[float], list[float]]:
        await embedder.embed_documents(warm)
        per_group, one_call, ingest = [], [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            for group in groups:
                await embedder.embed_documents(group)
            per_group.append(len(texts) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            await embedder.embed_documents(texts)
            one_call.append(len(texts) / (time.perf_counter() - t0))
            ingest.append(await asyncio.to_thread(ingest_rate, docs, warm_docs, len(texts), batch))
            print(
                f"raw {per_group[-1]:.2f}, raw one call {one_call[-1]:.2f}, "
                f"ingest {ingest[-1]:.2f} chunks/s",
                file=sys.stderr,
            )
        return per_group, one_call, ingest

    try:
        return asyncio.run(run_all())
    finally:
        embedder.close()


def ingest_rate(docs: list, warm: list, chunks: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data").start(timeout=120)
        try:

            async def send() -> float:
                async with AsyncClient(server.url) as client:
                    await send_batches(client, warm, batch, in_flight=2)  # warm-up
                    t0 = time.perf_counter()
                    await send_batches(client, docs, batch, in_flight=2)
                    return time.perf_counter() - t0

            return chunks / asyncio.run(send())
        finally:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--warm", type=int, default=32, help="warm-up documents (not timed)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="documents per ingest request")
    args = parser.parse_args()
    settings = Settings.from_env()
    read = list(itertools.islice(read_beir_corpus(DATASET / "corpus.jsonl"), args.docs + args.warm))
    docs, warm_docs = read[: args.docs], read[args.docs :]

    embedder = LocalEmbedder(batch_size=1, max_concurrent_batches=1, threads=1)
    indexer = Indexer(embedder, index=None)  # type: ignore[arg-type]  # planning only
    chunking = ChunkingParams(size=settings.chunk_size, overlap=settings.chunk_overlap)

    def chunk_texts(part: list) -> list[str]:
        texts = []
        for d in part:
            doc = DocumentIn(id=d.id, text=d.text, title=d.title, metadata=d.metadata)
            texts += [
                c.embed_text
                for c in indexer.plan("default", doc, document_version(doc, chunking), chunking)
            ]
        return texts

    groups = [chunk_texts(docs[i : i + args.batch]) for i in range(0, len(docs), args.batch)]
    warm_texts = chunk_texts(warm_docs)
    embedder.close()
    texts = [t for g in groups for t in g]

    raw, raw_one_call, ingest = measure(
        groups, warm_texts, settings, docs, warm_docs, args.batch, args.runs
    )
    result = {
        "documents": len(docs),
        "chunks": len(texts),
        "batch_documents": args.batch,
        "embedder_raw_chunks_per_s": statistics.median(raw),
        "embedder_raw_one_call_chunks_per_s": statistics.median(raw_one_call),
        "ingest_chunks_per_s": statistics.median(ingest),
        "ingest_over_raw": statistics.median(ingest) / statistics.median(raw),
        "ingest_over_raw_one_call": statistics.median(ingest) / statistics.median(raw_one_call),
        # Paired within a run (raw and ingest measured back to back): steadier than the
        # ratio of medians when the load from other work changes between runs.
        "ingest_over_raw_median_of_runs": statistics.median(
            i / r for i, r in zip(ingest, raw, strict=True)
        ),
        "runs": args.runs,
        "all_raw": raw,
        "all_raw_one_call": raw_one_call,
        "all_ingest": ingest,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
