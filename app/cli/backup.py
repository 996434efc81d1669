"""`rag-pipeline export FILE` and `import FILE`: the document log out to a backup file and back.

Both talk to Redis directly (REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER, or the data
directory's embedded Valkey, as `worker` and `replay` do), under RAG_STREAM_PREFIX. `export`
runs beside the service and writes a consistent cut: each document's newest entry (deletions
included) and, with --feedback, the feedback stream, as they stood when it began. `import`
checks the whole file, then loads it into an empty prefix with the original entry ids; the
projector of the `serve` or `worker` started on it (or `rag-pipeline replay`) then builds the
index. The file format and the procedure: docs/design.md and docs/deploy.md, "Backup and
restore".
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.cli.options import DATA_DIR_HELP
from app.errors import SettingsError
from app.settings import Settings

if TYPE_CHECKING:
    from tqdm import tqdm

    from app.adapters.redis.archive import ExportProgress, ImportProgress


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `export` and `import` to the command's subparsers."""
    export = sub.add_parser(
        "export",
        help="write the document log (each document's newest entry, deletions included) and, "
        "with --feedback, the feedback stream to a compressed, checksummed backup file; "
        "runs beside the service (reads Redis directly)",
    )
    export.add_argument(
        "file", metavar="FILE", help="the backup to write (as FILE.tmp, then renamed); - for stdout"
    )
    export.add_argument("--feedback", action="store_true", help="include the feedback stream")
    export.add_argument("--data-dir", help=DATA_DIR_HELP)
    export.set_defaults(run=run_export)

    load = sub.add_parser(
        "import",
        help="load a backup into an empty RAG_STREAM_PREFIX, with its original entry ids; the "
        "file is checked first (corrupt, truncated or newer: refused, nothing written); then "
        "start serve or worker on it, or run replay, to index it",
    )
    load.add_argument("file", metavar="FILE", help="the backup to load; - for stdin")
    load.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted import of this same file (the streams must hold exactly "
        "its first entries, which is checked)",
    )
    load.add_argument("--data-dir", help=DATA_DIR_HELP)
    load.set_defaults(run=run_import)


def run_export(args: argparse.Namespace, settings: Settings) -> int:
    from app.bootstrap import hosted_event_log

    if args.file == "-" and sys.stdout.isatty():
        raise SettingsError("export -: standard output is a terminal; redirect it to a file")
    if args.data_dir is not None:
        settings = settings.replace(data_dir=args.data_dir)
    with hosted_event_log(settings) as host:
        return asyncio.run(_export(host.settings, args.file, feedback=args.feedback))


def run_import(args: argparse.Namespace, settings: Settings) -> int:
    from app.bootstrap import hosted_event_log

    if args.data_dir is not None:
        settings = settings.replace(data_dir=args.data_dir)
    with hosted_event_log(settings) as host:
        if args.file != "-":
            return asyncio.run(_import(host.settings, Path(args.file), resume=args.resume))
        # The file is read twice (checked, then loaded): standard input is kept meanwhile.
        with tempfile.NamedTemporaryFile(prefix="rag-import-", suffix=".ragbak") as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool, 1024 * 1024)
            spool.flush()
            return asyncio.run(_import(host.settings, Path(spool.name), resume=args.resume))


def _build() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rag-pipeline")
    except PackageNotFoundError:
        return "unknown"


def _client(settings: Settings) -> Any:
    from app.adapters.redis.client import durable_client
    from app.bootstrap import redis_target

    # Long timeouts: a page of large documents is slow to write on a busy or remote server.
    return durable_client(
        redis_target(settings), pool_size=2, socket_timeout=30.0, connect_timeout=5.0
    )


async def _export(settings: Settings, file: str, *, feedback: bool) -> int:
    from tqdm import tqdm

    from app.adapters.backup_file import BackupWriter
    from app.adapters.redis.archive import export_log
    from app.adapters.redis.client import close_client
    from app.domain.events import Streams

    client = _client(settings)
    bar = tqdm(total=0, desc="export", unit="entry", file=sys.stderr)
    started = time.monotonic()
    try:
        with BackupWriter(file) as writer:
            done = await export_log(
                client,
                Streams(settings.stream_prefix),
                writer,
                feedback=feedback,
                build=_build(),
                created_at=time.time(),
                on_progress=lambda p: _show_export(bar, p),
            )
    finally:
        bar.close()
        await close_client(client)
    seconds = max(time.monotonic() - started, 1e-9)
    records = done.documents + done.feedback
    print(
        f"exported {done.documents} documents ({done.tombstones} of them deleted) and "
        f"{done.feedback} feedback entries of {settings.stream_prefix!r} to {file}: "
        f"{writer.file_bytes / 1e6:.2f} MB ({writer.raw_bytes / 1e6:.2f} MB uncompressed) in "
        f"{seconds:.2f} s: {done.read / seconds:,.0f} stream entries read/s, "
        f"{records / seconds:,.0f} records/s, {writer.raw_bytes / 1e6 / seconds:.1f} MB/s",
        # Standard output may be the backup itself.
        file=sys.stderr if file == "-" else sys.stdout,
    )
    return 0


def _show_export(bar: tqdm[None], progress: ExportProgress) -> None:
    if bar.total != progress.total:
        bar.total = progress.total
    bar.set_postfix_str(
        f"{progress.phase}, {progress.documents} documents, {progress.feedback} feedback",
        refresh=False,
    )
    bar.update(progress.read - bar.n)


async def _import(settings: Settings, path: Path, *, resume: bool) -> int:
    from tqdm import tqdm

    from app.adapters.backup_file import BackupReader
    from app.adapters.redis.archive import import_log
    from app.adapters.redis.client import close_client
    from app.bootstrap import redis_target
    from app.domain.events import Streams

    reader = BackupReader(path)
    header = reader.header()
    taken = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(header.created_at))
    print(
        f"backup of {header.prefix!r} taken {taken} by rag-pipeline {header.build}",
        file=sys.stderr,
    )
    client = _client(settings)
    bar = tqdm(total=0, desc="verify", unit="entry", file=sys.stderr)
    marks: dict[str, float] = {"verifying": time.monotonic()}

    def show(progress: ImportProgress) -> None:
        if progress.phase not in marks:
            marks[progress.phase] = time.monotonic()
            if progress.phase == "loading":
                bar.reset(total=progress.records)
                bar.set_description("import")
        bar.update(
            (
                progress.verified
                if progress.phase == "verifying"
                else progress.loaded + progress.present
            )
            - bar.n
        )

    try:
        done = await import_log(
            client,
            redis_target(settings),
            Streams(settings.stream_prefix),
            reader,
            resume=resume,
            on_progress=show,
        )
    finally:
        bar.close()
        await close_client(client)
    ended = time.monotonic()
    verify = marks.get("checking", ended) - marks["verifying"]
    load = max(ended - marks.get("loading", ended), 1e-9)
    present = f", {done.present} were there already" if done.present else ""
    print(
        f"imported {done.loaded} entries into {settings.stream_prefix!r} ({done.documents} "
        f"documents, {done.tombstones} of them deleted, {done.feedback} feedback{present}): "
        f"checked in {verify:.2f} s, loaded in {load:.2f} s: {done.loaded / load:,.0f} "
        f"entries/s, {done.raw_bytes / 1e6 / load:.1f} MB/s; start serve or worker on this "
        "prefix (or run `rag-pipeline replay`) to index them"
    )
    return 0
