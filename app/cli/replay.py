"""`rag-pipeline replay`: rebuild the index into a new generation, here or where it is held."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import TYPE_CHECKING, Protocol

from app.cli.options import DATA_DIR_HELP, add_api_key_file, api_key, server_url
from app.settings import Settings

if TYPE_CHECKING:
    from tqdm import tqdm

    from app.bootstrap import IndexSide

log = logging.getLogger("rag_pipeline")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `replay` to the command's subparsers."""
    replay = sub.add_parser(
        "replay",
        help="rebuild the index from the document stream into a new generation and switch "
        "to it; runs here when no process holds the index, else asks the one that does "
        "(serve or worker) over POST /api/v1/reindex",
    )
    replay.add_argument(
        "--url", default=None, help="where the holder listens (default http://RAG_HOST:RAG_PORT)"
    )
    replay.add_argument("--data-dir", help=DATA_DIR_HELP)
    add_api_key_file(replay)
    replay.set_defaults(run=run_replay)


def run_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Replay where the index is: here if no process holds it (this process then holds it
    for the replay's duration), else in the holder, whose progress is polled. Running a
    second index writer beside the holder is impossible (Edge's single-writer lock), and
    the holder is also the one whose projector must pause for the swap."""
    from app.bootstrap import build_index_side, hosted_event_log
    from app.errors import DependencyUnavailable

    if args.data_dir is not None:
        settings = settings.replace(data_dir=args.data_dir)
    with hosted_event_log(settings) as host:
        settings = host.settings
        try:
            index_side = build_index_side(settings, "replay")
        except DependencyUnavailable as exc:
            if "is held by" not in str(exc):
                raise
            log.info("%s; asking it to replay", exc)
            return _replay_remote(server_url(args, settings), str(exc), api_key(args))
        return _replay_here(index_side)


class _Progress(Protocol):
    """How far a replay got: the one run here (ReplayProgress) or a holder's (ReindexJob)."""

    @property
    def phase(self) -> str: ...
    @property
    def generation(self) -> str | None: ...
    @property
    def documents(self) -> int: ...
    @property
    def applied(self) -> int: ...
    @property
    def chunks(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def seconds(self) -> float: ...


def _show(bar: tqdm[None], progress: _Progress) -> None:
    if bar.total != progress.documents:
        bar.total = progress.documents
    bar.set_postfix_str(f"{progress.phase}, {progress.chunks} chunks", refresh=False)
    bar.update(progress.applied - bar.n)


def _summary(done: _Progress) -> str:
    rate = done.chunks / done.seconds if done.seconds > 0 else 0.0
    return (
        f"generation {done.generation} active: {done.documents} documents, {done.chunks} "
        f"chunks, {done.failed} failed, {done.seconds:.1f} s ({rate:.0f} chunks/s)"
    )


def _replay_here(index_side: IndexSide) -> int:
    from tqdm import tqdm

    from app.services.replay import ReplayProgress

    bar = tqdm(total=0, desc="replay", unit="doc")

    async def run() -> ReplayProgress:
        try:
            return await index_side.replay(on_progress=lambda p: _show(bar, p)).run()
        finally:
            await index_side.aclose()

    try:
        done = asyncio.run(run())
    finally:
        bar.close()
    print(_summary(done))
    return 0


def _replay_remote(url: str, held: str, api_key: str | None) -> int:
    import httpx
    from tqdm import tqdm

    from app.client import ApiError, AsyncClient

    async def run() -> int:
        async with AsyncClient(url, api_key=api_key) as client:
            try:
                job = await client.reindex()
            except (ApiError, httpx.HTTPError) as exc:
                print(
                    f"rag-pipeline: {held}; asked it at {url} (--url) to replay instead, "
                    f"which failed: {exc}",
                    file=sys.stderr,
                )
                return 1
            with tqdm(total=0, desc=f"replay {job.job_id[:8]}", unit="doc") as bar:
                while job.phase not in ("done", "failed"):
                    await asyncio.sleep(0.5)
                    job = await client.reindex_job(job.job_id)
                    _show(bar, job)
        if job.phase == "failed":
            print(f"rag-pipeline: replay failed: {job.error}", file=sys.stderr)
            return 1
        print(_summary(job))
        return 0

    return asyncio.run(run())
