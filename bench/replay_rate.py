"""Replay rate: chunks per second rebuilding the SciFact index from the document stream.

The corpus is loaded once through a real `rag-pipeline serve` (cold: embedding ~5k documents
takes many minutes on two cores), which also fills the embedding cache; the data directory
and key prefix are kept, so later runs start warm. Each replay then runs in this process as
`rag-pipeline replay` does when no server holds the index: a new generation, built from the
stream, swapped in. Reported: chunks/s per replay and the median.

    REDIS_URL=redis://127.0.0.1:6379/0 python bench/replay_rate.py [--runs 3]

Or from a copy of a data directory that holds the corpus already (ingested on the embedded
defaults, so its Valkey carries the stream and the warm cache; REDIS_URL empty):

    python bench/replay_rate.py --copy-from /path/to/scifact-data --data-dir /tmp/x --prefix rag:
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.api.schemas import DocumentInput  # noqa: E402
from app.bootstrap import build_index_side, resolve_event_log  # noqa: E402
from app.cli.corpus import read_beir_corpus  # noqa: E402
from app.client import AsyncClient, send_batches  # noqa: E402
from app.services.replay import ReplayConfig, ReplayProgress  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.conftest import SCIFACT  # noqa: E402
from tests.e2e.server import Server  # noqa: E402

DATASET = SCIFACT


def load(settings: Settings, docs: list[DocumentInput]) -> None:
    """Ingest the corpus through a server unless the index already holds it."""
    projection = build_index_side(settings, "replay")
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
            async with AsyncClient(server.url, timeout=3600) as client:
                await send_batches(client, docs, 64, in_flight=2)

        asyncio.run(send())
    finally:
        server.stop()


def cpu_seconds() -> tuple[float, float]:
    """This process's CPU time (every thread) and that of its finished children: the index
    builder child (app/adapters/qdrant/edge_builder.py) is waited for before the swap (an
    embedded Valkey is a child too, but runs until the end)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def replay_once(
    settings: Settings, batch: int
) -> tuple[ReplayProgress, tuple[float, float], float]:
    """One replay: its progress, the CPU seconds it took in this process and in the builder
    child (the swap included, opening excluded) and the seconds until the swap began (the
    rebuild and catch-up, before the new generation's HNSW build)."""
    projection = build_index_side(settings, "replay")
    swap_began: list[float] = []

    def watch(progress: ReplayProgress) -> None:
        if progress.phase == "swapping" and not swap_began:
            swap_began.append(time.time() - progress.started_at)

    async def run() -> tuple[ReplayProgress, tuple[float, float], float]:
        try:
            own, children = cpu_seconds()
            done = await projection.replay(ReplayConfig(batch=batch), on_progress=watch).run()
            own_after, children_after = cpu_seconds()
            return done, (own_after - own, children_after - children), swap_began[0]
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
    parser.add_argument(
        "--copy-from",
        type=Path,
        default=None,
        help="a data directory holding the corpus already: copied to --data-dir (if that is "
        "absent) and replayed there, never opened itself",
    )
    args = parser.parse_args()
    if args.copy_from is not None and not args.data_dir.exists():
        shutil.copytree(args.copy_from, args.data_dir, symlinks=True)
    settings = Settings.from_env().replace(data_dir=str(args.data_dir), stream_prefix=args.prefix)
    url, embedded = resolve_event_log(settings)
    settings = settings.replace(redis_url=url)
    try:
        docs = list(read_beir_corpus(DATASET / "corpus.jsonl"))[: args.docs]
        load(settings, docs)
        rates, per_cpu, rebuild_rates, parent_cpu, child_cpu = [], [], [], [], []
        for run in range(args.runs):
            done, (own, child), rebuilt = replay_once(settings, args.batch or settings.replay_batch)
            cpu = own + child
            rates.append(done.chunks / done.seconds)
            per_cpu.append(done.chunks / cpu)
            parent_cpu.append(own)
            child_cpu.append(child)
            rebuild_rates.append(done.chunks / rebuilt)
            print(
                f"replay {run + 1}: {done.documents} documents, {done.chunks} chunks in "
                f"{done.seconds:.2f} s = {rates[-1]:.0f} chunks/s (rebuilt in {rebuilt:.2f} s = "
                f"{rebuild_rates[-1]:.0f} chunks/s, then HNSW and swap); {cpu:.2f} CPU s (parent "
                f"{own:.2f}, builder child {child:.2f}) = "
                f"{per_cpu[-1]:.0f} chunks per CPU second (generation {done.generation})"
            )
        print(
            f"median {statistics.median(rates):.0f} chunks/s end to end, "
            f"{statistics.median(rebuild_rates):.0f} chunks/s until the swap began, "
            f"{statistics.median(per_cpu):.0f} chunks per CPU second (CPU s parent "
            f"{statistics.median(parent_cpu):.2f}, child {statistics.median(child_cpu):.2f}), "
            f"over {len(rates)} replays"
        )
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
