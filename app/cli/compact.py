"""`rag-pipeline compact`: compact the document stream now, online (app/services/compaction.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import msgspec

from app.cli.options import DATA_DIR_HELP
from app.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `compact` to the command's subparsers."""
    parser = sub.add_parser(
        "compact",
        help="rewrite the document stream to each document's newest event (deletes kept "
        "until settled and RAG_TOMBSTONE_RETENTION_HOURS old); safe while the service runs",
    )
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from app.bootstrap import hosted_event_log

    if args.data_dir is not None:
        settings = settings.replace(data_dir=args.data_dir)
    with hosted_event_log(settings) as host:
        return asyncio.run(_compact(host.settings))


async def _compact(settings: Settings) -> int:
    from app.adapters.redis.doc_status import RedisDocStatus
    from app.adapters.redis.rewrite import RedisLogRewriter
    from app.adapters.redis.streams import RedisEventLog
    from app.bootstrap import index_id, redis_target
    from app.bootstrap.index_side import compaction_jobs

    async with contextlib.AsyncExitStack() as closing:
        event_log = RedisEventLog(redis_target(settings), pool_size=4)
        closing.push_async_callback(event_log.close)
        status = RedisDocStatus(redis_target(settings), prefix=settings.stream_prefix, pool_size=2)
        closing.push_async_callback(status.close)
        rewriter = RedisLogRewriter(redis_target(settings))
        closing.push_async_callback(rewriter.close)
        jobs, _ = compaction_jobs(
            settings, event_log, status, index_id(settings), rewriter, closing
        )
        job = jobs.start()
        print(f"compaction {job.job_id}", file=sys.stderr)
        waiting = asyncio.ensure_future(jobs.wait())
        while not waiting.done():
            await asyncio.wait({waiting}, timeout=2.0)
            p = job.progress
            print(
                f"  {p.phase}: {p.read}/{p.entries_before} entries read, {p.kept} kept",
                file=sys.stderr,
            )
        await waiting  # raises as the compaction did
        progress = job.progress
        print(
            msgspec.json.encode(msgspec.structs.asdict(progress) | {"job_id": job.job_id}).decode()
        )
        return 0
