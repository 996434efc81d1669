"""`rag-pipeline erase`: erase documents of any tenant (app/services/erasure.py), and wait."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec

from app.cli.options import DATA_DIR_HELP
from app.settings import Settings

if TYPE_CHECKING:
    from app.bootstrap import IndexSide
    from app.ports import ErasureRecords
    from app.services.erasure import Erasure

log = logging.getLogger("rag_pipeline")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `erase` to the command's subparsers."""
    parser = sub.add_parser(
        "erase",
        help="erase documents: every stored trace of their text and metadata (the document "
        "stream's past versions, dead letters, feedback, retrieval results, cached embeddings, "
        "the index's files); carried out here when no process holds the index, else by the "
        "process that projects",
    )
    parser.add_argument("doc_ids", nargs="+", metavar="DOC_ID")
    parser.add_argument("--tenant", required=True, help="the tenant the documents belong to")
    parser.add_argument("--no-wait", action="store_true", help="record the requests and return")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds to wait for completion"
    )
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from app.bootstrap import build_index_side, hosted_event_log
    from app.errors import DependencyUnavailable

    if args.data_dir is not None:
        settings = settings.replace(data_dir=args.data_dir)
    with hosted_event_log(settings) as host:
        settings = host.settings
        side: IndexSide | None = None
        if not args.no_wait:
            try:
                side = build_index_side(settings, "erase")
            except DependencyUnavailable as exc:
                if "is held by" not in str(exc):
                    raise
                log.info("%s; it carries the erasures out", exc)
        return asyncio.run(_erase(settings, args, side))


async def _erase(settings: Settings, args: argparse.Namespace, side: IndexSide | None) -> int:
    from app.adapters.redis.erasures import RedisErasureRecords
    from app.bootstrap import redis_target
    from app.services.erasure import Erasure

    async with contextlib.AsyncExitStack() as closing:
        records = RedisErasureRecords(redis_target(settings), prefix=settings.stream_prefix)
        closing.push_async_callback(records.close)
        requested = [Erasure.new(args.tenant, doc_id) for doc_id in args.doc_ids]
        for erasure in requested:
            await records.save(erasure)
            print(
                f"erasure {erasure.erasure_id}: {erasure.tenant}/{erasure.doc_id}", file=sys.stderr
            )
        if args.no_wait:
            return _print(requested)
        deadline = time.monotonic() + args.timeout
        if side is not None:
            # No process holds the index: this one projects and erases until they are done.
            closing.push_async_callback(side.aclose)
            stop = asyncio.Event()
            projecting = asyncio.create_task(side.projector.run(stop))
            try:
                done = await _until_complete(records, requested, deadline, side.eraser.step)
            finally:
                stop.set()
                await projecting
        else:
            done = await _until_complete(records, requested, deadline, None)
        return _print(done)


async def _until_complete(
    records: ErasureRecords,
    requested: list[Erasure],
    deadline: float,
    step: Callable[[], Awaitable[object]] | None,
) -> list[Erasure]:
    from app.errors import RagError

    while True:
        if step is not None:
            try:
                await step()
            except RagError as exc:
                log.warning("erasure round stopped: %s", exc)
        found = [await records.load(e.erasure_id) for e in requested]
        current = [f or e for f, e in zip(found, requested, strict=True)]
        if all(e.phase == "complete" for e in current) or time.monotonic() > deadline:
            return current
        print("  " + ", ".join(f"{e.doc_id}: {e.phase}" for e in current), file=sys.stderr)
        await asyncio.sleep(1.0)


def _print(erasures: list[Erasure]) -> int:
    for erasure in erasures:
        print(msgspec.json.encode(erasure).decode())
    return 0 if all(e.phase == "complete" for e in erasures) else 1
