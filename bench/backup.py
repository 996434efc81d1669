"""Backup and restore rates: `rag-pipeline export` and `import` of a SciFact-sized document log.

The log is the 5,183 SciFact documents appended straight to the document stream (no
embedding), every 4th revised once, every 16th twice, every 40th deleted, every 200th deleted
and back: 6,959 entries, as tests/integration/test_archive_scifact.py builds it. Each run
exports it (both passes, gzip) to a file and imports that into a fresh prefix (checks, then
load), as the commands do; reported per run and as medians: entries/s, MB/s of events, the
file's size. With --restore-docs N, each run also restores a backup of the first N documents
into a fresh prefix and data directory and replays it in process, as `rag-pipeline import`
then `rag-pipeline replay` do after a disaster: every chunk is embedded again, since the
embedding cache is not in the backup.

    REDIS_URL=redis://127.0.0.1:6379/0 python bench/backup.py [--runs 5] [--restore-docs 300]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.adapters.backup_file import BackupReader, BackupWriter  # noqa: E402
from app.adapters.redis.archive import export_log, import_log  # noqa: E402
from app.adapters.redis.client import RedisTarget, close_client, durable_client  # noqa: E402
from app.bootstrap import build_index_side, resolve_event_log  # noqa: E402
from app.domain.events import DocumentDeleted, DocumentUpserted, Streams  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.conftest import SCIFACT  # noqa: E402
from tests.integration.redis_fixtures import delete_prefixed  # noqa: E402
from tests.integration.test_archive_scifact import append_log, scifact_events  # noqa: E402


async def export_once(target: RedisTarget, prefix: str, path: Path, level: int) -> dict[str, float]:
    client = durable_client(target, pool_size=2, socket_timeout=30.0, connect_timeout=5.0)
    try:
        started = time.perf_counter()
        with BackupWriter(str(path), level=level) as writer:
            done = await export_log(
                client, Streams(prefix), writer, feedback=True, build="bench", created_at=0.0
            )
        seconds = time.perf_counter() - started
    finally:
        await close_client(client)
    return {
        "seconds": seconds,
        "read_per_s": done.read / seconds,
        "records_per_s": (done.documents + done.feedback) / seconds,
        "mb_per_s": writer.raw_bytes / 1e6 / seconds,
        "raw_mb": writer.raw_bytes / 1e6,
        "file_mb": path.stat().st_size / 1e6,
        "documents": done.documents,
    }


async def import_once(target: RedisTarget, prefix: str, path: Path) -> dict[str, float]:
    client = durable_client(target, pool_size=2, socket_timeout=30.0, connect_timeout=5.0)
    marks: dict[str, float] = {}
    try:
        started = time.perf_counter()
        done = await import_log(
            client,
            target,
            Streams(prefix),
            BackupReader(path),
            on_progress=lambda p: marks.setdefault(p.phase, time.perf_counter()),
        )
        seconds = time.perf_counter() - started
    finally:
        await close_client(client)
    loading = time.perf_counter() - marks["loading"]
    return {
        "seconds": seconds,
        "checked_s": marks["checking"] - started,
        "entries_per_s": done.loaded / seconds,
        "load_entries_per_s": done.loaded / loading,
        "mb_per_s": done.raw_bytes / 1e6 / seconds,
    }


def restore_once(settings: Settings, backup: Path, data_dir: Path, prefix: str) -> dict[str, float]:
    """Import into a fresh prefix and data directory, then replay there in process."""
    shutil.rmtree(data_dir, ignore_errors=True)
    here = settings.replace(data_dir=str(data_dir), stream_prefix=prefix)
    target = RedisTarget(url=here.redis_url)
    started = time.perf_counter()
    imported = asyncio.run(import_once(target, prefix, backup))
    index_side = build_index_side(here, "replay")
    opened = time.perf_counter()

    async def replay() -> int:
        try:
            done = await index_side.replay().run()
            return done.chunks
        finally:
            await index_side.aclose()

    chunks = asyncio.run(replay())
    ended = time.perf_counter()
    return {
        "seconds": ended - started,
        "import_s": imported["seconds"],
        "open_s": opened - started - imported["seconds"],
        "replay_s": ended - opened,
        "chunks": chunks,
    }


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--level", type=int, default=6, help="gzip level (the commands use 6)")
    parser.add_argument(
        "--restore-docs", type=int, default=0, help="also restore and replay the first N documents"
    )
    parser.add_argument("--dir", type=Path, default=Path("/tmp/rag-bench-backup"))
    parser.add_argument("--prefix", default="bench:{backup}:", help="key prefix on Redis")
    args = parser.parse_args()
    settings = Settings.from_env().replace(data_dir=str(args.dir / "source"))
    url, embedded = resolve_event_log(settings)
    settings = settings.replace(redis_url=url)
    target = RedisTarget(url=url)
    source, restored = args.prefix, args.prefix.replace("}", "-restored}")
    args.dir.mkdir(parents=True, exist_ok=True)
    try:
        delete_prefixed(target, source)
        events = scifact_events(SCIFACT)
        asyncio.run(append_log(target, source, events))
        print(f"log: {len(events)} entries of {len(set(e.doc_id for e in events))} documents")
        exports, imports = [], []
        for run in range(args.runs):
            path = args.dir / "scifact.ragbak"
            exports.append(asyncio.run(export_once(target, source, path, args.level)))
            delete_prefixed(target, restored)
            imports.append(asyncio.run(import_once(target, restored, path)))
            e, i = exports[-1], imports[-1]
            print(
                f"run {run + 1}: export {e['seconds']:.2f} s ({e['read_per_s']:,.0f} entries "
                f"read/s, {e['records_per_s']:,.0f} records/s, {e['mb_per_s']:.1f} MB/s), file "
                f"{e['file_mb']:.2f} MB of {e['raw_mb']:.2f} MB; import {i['seconds']:.2f} s "
                f"(checks {i['checked_s']:.2f} s; {i['entries_per_s']:,.0f} entries/s, "
                f"{i['load_entries_per_s']:,.0f} while loading, {i['mb_per_s']:.1f} MB/s)"
            )
        delete_prefixed(target, restored)
        print(
            f"median of {args.runs}: export {median(exports, 'seconds'):.2f} s, "
            f"{median(exports, 'read_per_s'):,.0f} entries read/s, "
            f"{median(exports, 'records_per_s'):,.0f} records/s, "
            f"{median(exports, 'mb_per_s'):.1f} MB/s; file {median(exports, 'file_mb'):.2f} MB "
            f"({median(exports, 'raw_mb'):.2f} MB uncompressed); import "
            f"{median(imports, 'seconds'):.2f} s, {median(imports, 'entries_per_s'):,.0f} "
            f"entries/s ({median(imports, 'load_entries_per_s'):,.0f} while loading), "
            f"{median(imports, 'mb_per_s'):.1f} MB/s"
        )
        if args.restore_docs:
            restore(args, settings, target, events)
    finally:
        delete_prefixed(target, source)
        if embedded is not None:
            embedded.stop()
    return 0


def restore(
    args: argparse.Namespace,
    settings: Settings,
    target: RedisTarget,
    events: list[DocumentUpserted | DocumentDeleted],
) -> None:
    wanted = {e.doc_id for e in events[: args.restore_docs]}
    small, into = args.prefix.replace("}", "-small}"), args.prefix.replace("}", "-dr}")
    delete_prefixed(target, small)
    asyncio.run(append_log(target, small, [e for e in events if e.doc_id in wanted]))
    backup = args.dir / f"scifact-{args.restore_docs}.ragbak"
    asyncio.run(export_once(target, small, backup, args.level))
    delete_prefixed(target, small)
    runs = []
    for run in range(args.runs):
        delete_prefixed(target, into)
        runs.append(restore_once(settings, backup, args.dir / "restored", into))
        r = runs[-1]
        print(
            f"restore {run + 1}: {len(wanted)} documents, {r['chunks']:.0f} chunks in "
            f"{r['seconds']:.1f} s (import {r['import_s']:.2f} s, opening the index and model "
            f"{r['open_s']:.1f} s, replay {r['replay_s']:.1f} s: "
            f"{len(wanted) / r['seconds']:.2f} documents/s)"
        )
    delete_prefixed(target, into)
    print(
        f"median restore of {len(wanted)} documents: {median(runs, 'seconds'):.1f} s "
        f"({len(wanted) / median(runs, 'seconds'):.2f} documents/s, "
        f"{median(runs, 'chunks') / median(runs, 'replay_s'):.1f} chunks/s in the replay)"
    )


if __name__ == "__main__":
    sys.exit(main())
