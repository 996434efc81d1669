"""Ingest throughput over HTTP against the embedder's raw throughput on the same chunks.

Raw: the local embedder embeds the exact chunk texts ingest would produce for the first
--docs SciFact documents, in-process. Ingest: a fresh `rag-pipeline serve` receives the same
documents through `POST /api/v1/ingest` in batches. Each runs --runs times; medians reported.

    python bench/ingest_throughput.py [--docs 600] [--runs 3]
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

from app.adapters.local_embedder import LocalEmbedder  # noqa: E402
from app.client import Client, send_batches  # noqa: E402
from app.corpus import read_beir_corpus  # noqa: E402
from app.domain import ChunkingParams, DocumentIn  # noqa: E402
from app.indexing import Indexer, document_version  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.e2e.server import Server  # noqa: E402

DATASET = ROOT.parent / "shared" / "datasets" / "scifact-train"


def raw_rate(texts: list[str], settings: Settings) -> float:
    embedder = LocalEmbedder(
        batch_size=settings.batch_size,
        max_concurrent_batches=settings.max_concurrent_batches,
        threads=settings.embedder_threads,
    )
    try:
        t0 = time.perf_counter()
        asyncio.run(embedder.embed_documents(texts))
        return len(texts) / (time.perf_counter() - t0)
    finally:
        embedder.close()


def ingest_rate(docs: list, chunks: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "data").start(timeout=120)
        try:

            async def send() -> float:
                async with Client(server.url) as client:
                    t0 = time.perf_counter()
                    await send_batches(client, docs, batch, in_flight=2)
                    return time.perf_counter() - t0

            return chunks / asyncio.run(send())
        finally:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=600)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="documents per ingest request")
    args = parser.parse_args()
    settings = Settings.from_env()
    docs = list(itertools.islice(read_beir_corpus(DATASET / "corpus.jsonl"), args.docs))

    embedder = LocalEmbedder(batch_size=1, max_concurrent_batches=1, threads=1)
    indexer = Indexer(embedder, index=None)  # type: ignore[arg-type]  # planning only
    chunking = ChunkingParams(size=settings.chunk_size, overlap=settings.chunk_overlap)
    texts = []
    for d in docs:
        doc = DocumentIn(id=d.id, text=d.text, title=d.title, metadata=d.metadata)
        texts += [
            c.embed_text
            for c in indexer.plan("default", doc, document_version(doc, chunking), chunking)
        ]
    embedder.close()

    raw, ingest = [], []
    for _ in range(args.runs):
        raw.append(raw_rate(texts, settings))
        ingest.append(ingest_rate(docs, len(texts), args.batch))
    result = {
        "documents": len(docs),
        "chunks": len(texts),
        "embedder_raw_chunks_per_s": statistics.median(raw),
        "ingest_chunks_per_s": statistics.median(ingest),
        "ingest_over_raw": statistics.median(ingest) / statistics.median(raw),
        "runs": args.runs,
        "all_raw": raw,
        "all_ingest": ingest,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
