"""Replay rate: chunks per second rebuilding the SciFact index from the document stream.

The corpus is loaded once through a real `rag-pipeline serve` (cold: embedding ~5k documents
takes many minutes on two cores), which also fills the embedding cache; the data directory
and key prefix are kept, so later runs start warm. Each replay then runs in this process as
`rag-pipeline replay` does when no server holds the index: a new generation, built from the
stream, swapped in. Reported: chunks/s per replay and the median.

    REDIS_URL=redis://127.0.0.1:6379/0 python bench/replay_rate.py [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.adapters.embedded_redis import resolve_redis_url  # noqa: E402
from app.client import Client, send_batches  # noqa: E402
from app.corpus import read_beir_corpus  # noqa: E402
from app.replay import ReplayConfig, ReplayProgress  # noqa: E402
from app.schemas import DocumentInput  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.wiring import build_projection  # noqa: E402
from tests.e2e.server import Server  # noqa: E402

DATASET = ROOT.parent / "shared" / "datasets" / "scifact-train"
if not DATASET.exists():
    DATASET = Path("/work/shared/datasets/scifact-train")


def load(settings: Settings, docs: list[DocumentInput]) -> None:
    """Ingest the corpus through a server unless the index already holds it."""
    projection = build_projection(settings, "replay")
    try:
        have = asyncio.run(projection.index.stats()).documents
    finally:
        asyncio.run(projection.aclose())
    if have >= len(docs):
        print(f"index holds {have} documents: warm start", file=sys.stderr)
        return
    print(f"loading {len(docs)} documents (cold: this takes minutes)", file=sys.stderr)
    server = Server(settings.data_path, env={"RAG_STREAM_PREFIX": settings.stream_prefix}).start(
        timeout=300
    )
    try:

        async def send() -> None:
            async with Client(server.url, timeout=3600) as client:
                await send_batches(client, docs, 64, in_flight=2)

        asyncio.run(send())
    finally:
        server.stop()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def replay_once(settings: Settings, batch: int) -> tuple[ReplayProgress, float]:
    """One replay, and the CPU seconds it took (the swap included, opening excluded)."""
    projection = build_projection(settings, "replay")

    async def run() -> tuple[ReplayProgress, float]:
        try:
            before = cpu_seconds()
            done = await projection.replay(ReplayConfig(batch=batch)).run()
            return done, cpu_seconds() - before
        finally:
            await projection.aclose()

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--docs", type=int, default=None, help="only the first N documents")
    parser.add_argument("--batch", type=int, default=None, help="RAG_REPLAY_BATCH")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/rag-bench-replay"))
    parser.add_argument("--prefix", default="bench:replay:", help="key prefix on Redis")
    args = parser.parse_args()
    settings = Settings.from_env().replace(data_dir=str(args.data_dir), stream_prefix=args.prefix)
    url, embedded = resolve_redis_url(settings)
    settings = settings.replace(redis_url=url)
    try:
        docs = list(read_beir_corpus(DATASET / "corpus.jsonl"))[: args.docs]
        load(settings, docs)
        rates, per_cpu = [], []
        for run in range(args.runs):
            done, cpu = replay_once(settings, args.batch or settings.replay_batch)
            rates.append(done.chunks / done.seconds)
            per_cpu.append(done.chunks / cpu)
            print(
                f"replay {run + 1}: {done.documents} documents, {done.chunks} chunks in "
                f"{done.seconds:.2f} s = {rates[-1]:.0f} chunks/s; {cpu:.2f} CPU s = "
                f"{per_cpu[-1]:.0f} chunks per CPU second (generation {done.generation})"
            )
        print(
            f"median {statistics.median(rates):.0f} chunks/s, "
            f"{statistics.median(per_cpu):.0f} chunks per CPU second, over {len(rates)} replays"
        )
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
