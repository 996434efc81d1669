"""The `rag-pipeline` command: serve | worker | replay | ingest | eval | keys | dead-letters."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import msgspec

from app.api.listener import Listener
from app.cli import dead_letters as dead_letters_cli
from app.errors import RagError, SettingsError
from app.settings import Settings

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from app.bootstrap import Projection

log = logging.getLogger("rag_pipeline")

# After SIGTERM, how long connections already in the accept queue are still taken in.
_ACCEPT_QUEUED_SECONDS = 0.2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"rag-pipeline: bad setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request at INFO: the CLI's polling would bury its own progress bar.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        result: int = args.run(args, settings)
        return result
    except SettingsError as exc:
        if args.run not in (_serve, _worker, _replay):
            # The other commands' SettingsErrors are about their arguments (a keys file,
            # --tenant, --api-key-file): a failed command, not a process that cannot start.
            print(f"rag-pipeline: {exc}", file=sys.stderr)
            return 1
        # One line, whatever the message holds: the last line of a crash-looping pod's log.
        print(f"rag-pipeline: bad setting: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except RagError as exc:
        print(f"rag-pipeline: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rag-pipeline", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve", help="serve the HTTP API (embedded defaults: nothing to configure)"
    )
    serve.add_argument("--host", help="listen address (default RAG_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default RAG_PORT, 8000)")
    serve.add_argument("--data-dir", help="data directory (default RAG_DATA_DIR, ./rag-data)")
    serve.set_defaults(run=_serve)

    worker = sub.add_parser(
        "worker",
        help="apply document events to the index (the projector) without serving the API; "
        "answers /health and /ready on RAG_HOST:RAG_PORT",
    )
    worker.add_argument("--host", help="listen address (default RAG_HOST, 127.0.0.1)")
    worker.add_argument("--port", type=int, help="listen port (default RAG_PORT, 8000)")
    worker.add_argument("--data-dir", help="data directory (default RAG_DATA_DIR, ./rag-data)")
    worker.set_defaults(run=_worker)

    replay = sub.add_parser(
        "replay",
        help="rebuild the index from the document stream into a new generation and switch "
        "to it; runs here when no process holds the index, else asks the one that does "
        "(serve or worker) over POST /api/v1/reindex",
    )
    replay.add_argument(
        "--url", default=None, help="where the holder listens (default http://RAG_HOST:RAG_PORT)"
    )
    replay.add_argument("--data-dir", help="data directory (default RAG_DATA_DIR, ./rag-data)")
    replay.add_argument("--api-key-file", type=Path, help=_API_KEY_FILE_HELP)
    replay.set_defaults(run=_replay)

    ingest = sub.add_parser("ingest", help="send .txt/.md files or a BEIR corpus.jsonl to a server")
    ingest.add_argument("paths", nargs="+", type=Path)
    ingest.add_argument("--url", default=None, help="server URL (default http://RAG_HOST:RAG_PORT)")
    ingest.add_argument("--batch", type=int, default=64, help="documents per request")
    ingest.add_argument("--api-key-file", type=Path, help=_API_KEY_FILE_HELP)
    ingest.set_defaults(run=_ingest)

    keys = sub.add_parser(
        "keys", help="make an API key (`keys new`) or check a keys file (`keys check FILE`)"
    )
    keys_sub = keys.add_subparsers(required=True, metavar="ACTION")
    new = keys_sub.add_parser(
        "new", help="print a new random key and the entry to add to RAG_API_KEYS_FILE"
    )
    new.add_argument("--tenant", required=True, help="the tenant the key acts for")
    new.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=["search", "ingest", "admin"],
        help="a scope the key has (repeatable)",
    )
    new.add_argument("--name", default="", help="who holds the key (shown in logs)")
    new.set_defaults(run=_keys_new)
    check = keys_sub.add_parser("check", help="validate a keys file and count its keys")
    check.add_argument("file", type=Path)
    check.set_defaults(run=_keys_check)

    ev = sub.add_parser("eval", help="score a BEIR dataset through the HTTP API")
    ev.add_argument("dataset", type=Path, help="folder with corpus.jsonl, queries.jsonl, qrels/")
    ev.add_argument("--url", default=None, help="server URL (default http://RAG_HOST:RAG_PORT)")
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
    ev.add_argument("--api-key-file", type=Path, help=_API_KEY_FILE_HELP)
    ev.set_defaults(run=_eval)

    dead_letters_cli.register(sub)
    return parser


# A file, not an argument or a variable: a key on the command line shows in `ps`.
_API_KEY_FILE_HELP = "file holding the API key to send (servers with RAG_API_KEYS_FILE)"


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file is None:
        return None
    try:
        key: str = args.api_key_file.read_text().strip()
    except OSError as exc:
        raise SettingsError(f"--api-key-file: {exc}") from exc
    if not key:
        raise SettingsError(f"--api-key-file: {args.api_key_file} is empty")
    return key


def _url(args: argparse.Namespace, settings: Settings) -> str:
    if args.url:
        return str(args.url)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return f"http://{host}:{settings.port}"


class _Closable(Protocol):
    async def aclose(self) -> None: ...


S = TypeVar("S", bound=_Closable)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from app.api.asgi import create_app
    from app.bootstrap import build_services

    return _run_http(args, settings, build_services, create_app, "serving")


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from app.api.asgi import create_worker_app
    from app.bootstrap import build_worker

    return _run_http(args, settings, build_worker, create_worker_app, "projecting; probes")


def _run_http(
    args: argparse.Namespace,
    settings: Settings,
    build: Callable[[Settings], S],
    make_app: Callable[[Settings, S], Starlette],
    what: str,
) -> int:
    """Build the services, then run their app under Hypercorn until SIGTERM/SIGINT.

    The event log is the one REDIS_URL names or, when it is empty, the data directory's
    embedded Valkey: started here if none runs, and then stopped here on exit, after the
    services have closed. Services are built before the server starts, so a failure (say,
    the index is held by another process) ends the command with its message.
    """
    from hypercorn.asyncio import serve
    from hypercorn.config import Config
    from hypercorn.utils import LifespanFailureError

    from app.adapters.redis.embedded import supervise
    from app.bootstrap import resolve_event_log
    from app.telemetry import tracing

    changes = {
        name: value
        for name, value in (("host", args.host), ("port", args.port), ("data_dir", args.data_dir))
        if value is not None
    }
    settings = settings.replace(**changes)
    config = Config()
    where = (
        f"[{settings.host}]:{settings.port}"
        if ":" in settings.host
        else f"{settings.host}:{settings.port}"
    )
    config.graceful_timeout = settings.graceful_timeout_seconds
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")

    url, embedded = resolve_event_log(settings)
    settings = settings.replace(redis_url=url)

    async def run() -> None:
        # The embedded server is ours to keep up: nothing else would restart it.
        keeper = None if embedded is None else asyncio.create_task(supervise(embedded))
        services = await asyncio.to_thread(build, settings)
        listener: Listener | None = None
        try:
            try:
                listener = Listener(settings.host, settings.port, config.backlog)
            except OSError as exc:
                raise SettingsError(
                    f"RAG_HOST/RAG_PORT: cannot listen on {where}: {exc.strerror or exc}"
                ) from exc
            config.bind = [listener.bind]
            stop = asyncio.Event()
            app = make_app(settings, services)

            def drain() -> None:
                # /ready answers false from now on; new connections are dropped at the
                # kernel, those already queued are still accepted for a moment; then
                # Hypercorn closes the socket, lets requests in flight finish within
                # RAG_GRACEFUL_TIMEOUT_SECONDS, and the lifespan stops the projector and
                # flushes the recorder.
                if getattr(app.state, "draining", False):
                    return
                log.info("signal received: draining")
                app.state.draining = True
                assert listener is not None
                filtered = listener.refuse_new()
                loop.call_later(_ACCEPT_QUEUED_SECONDS if filtered else 0.0, stop.set)

            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, drain)
            log.info("%s on http://%s (data in %s)", what, where, settings.data_path)
            try:
                await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
            except LifespanFailureError as exc:
                failed = _failed_startup(exc)
                if failed is None:
                    raise
                # Hypercorn's error carries the app's traceback as text; the RagError that
                # stopped the start-up is the whole story (main prints it on one line).
                raise failed from None
        finally:
            if listener is not None:
                listener.close()
            await services.aclose()
            if keeper is not None:
                keeper.cancel()

    provider = tracing.install(settings)
    try:
        asyncio.run(run())
    finally:
        if provider is not None:
            provider.shutdown()  # exports the spans still batched
        if embedded is not None:
            embedded.stop()
    return 0


def _failed_startup(exc: BaseException) -> RagError | None:
    """The RagError an app's lifespan start-up raised. Starlette reports it to Hypercorn,
    which raises its LifespanFailureError while that error is being handled: the context."""
    seen = exc.__context__
    while seen is not None and not isinstance(seen, RagError):
        seen = seen.__context__
    return seen


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    """Replay where the index is: here if no process holds it (this process then holds it
    for the replay's duration), else in the holder, whose progress is polled. Running a
    second index writer beside the holder is impossible (Edge's single-writer lock), and
    the holder is also the one whose projector must pause for the swap."""
    from app.bootstrap import build_projection, resolve_event_log
    from app.errors import DependencyUnavailable

    if args.data_dir is not None:
        settings = settings.replace(data_dir=args.data_dir)
    url, embedded = resolve_event_log(settings)
    settings = settings.replace(redis_url=url)
    try:
        try:
            projection = build_projection(settings, "replay")
        except DependencyUnavailable as exc:
            if "is held by" not in str(exc):
                raise
            log.info("%s; asking it to replay", exc)
            return _replay_remote(_url(args, settings), str(exc), _api_key(args))
        return _replay_here(projection)
    finally:
        if embedded is not None:
            embedded.stop()


def _replay_here(projection: Projection) -> int:
    from tqdm import tqdm

    from app.services.replay import ReplayProgress

    bar = tqdm(total=0, desc="replay", unit="doc")

    def show(progress: ReplayProgress) -> None:
        if bar.total != progress.documents:
            bar.total = progress.documents
        bar.set_postfix_str(f"{progress.phase}, {progress.chunks} chunks", refresh=False)
        bar.update(progress.applied - bar.n)

    async def run() -> ReplayProgress:
        try:
            return await projection.replay(on_progress=show).run()
        finally:
            await projection.aclose()

    try:
        done = asyncio.run(run())
    finally:
        bar.close()
    print(_summary(done.generation, done.documents, done.chunks, done.failed, done.seconds))
    return 0


def _replay_remote(url: str, held: str, api_key: str | None) -> int:
    import httpx
    from tqdm import tqdm

    from app.client import ApiError, Client

    async def run() -> int:
        async with Client(url, api_key=api_key) as client:
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
                    bar.total = job.documents
                    bar.set_postfix_str(f"{job.phase}, {job.chunks} chunks", refresh=False)
                    bar.update(job.applied - bar.n)
        if job.phase == "failed":
            print(f"rag-pipeline: replay failed: {job.error}", file=sys.stderr)
            return 1
        print(_summary(job.generation, job.documents, job.chunks, job.failed, job.seconds))
        return 0

    return asyncio.run(run())


def _summary(
    generation: str | None, documents: int, chunks: int, failed: int, seconds: float
) -> str:
    rate = chunks / seconds if seconds > 0 else 0.0
    return (
        f"generation {generation} active: {documents} documents, {chunks} chunks, "
        f"{failed} failed, {seconds:.1f} s ({rate:.0f} chunks/s)"
    )


def _ingest(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from app.api.schemas import IngestResponse
    from app.cli.corpus import read_documents
    from app.client import Client, send_batches

    docs = list(read_documents(args.paths))
    if not docs:
        print("rag-pipeline: no .txt, .md or .jsonl documents found", file=sys.stderr)
        return 1

    async def run() -> dict[str, int]:
        counts: dict[str, int] = {}
        async with Client(_url(args, settings), api_key=_api_key(args)) as client:
            with tqdm(total=len(docs), desc="ingest", unit="doc") as bar:

                def done(response: IngestResponse, sent: int) -> None:
                    for doc in response.documents:
                        counts[doc.status] = counts.get(doc.status, 0) + 1
                    bar.update(sent)

                await send_batches(client, docs, args.batch, on_done=done)
        return counts

    counts = asyncio.run(run())
    print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    return 0


def _keys_new(args: argparse.Namespace, settings: Settings) -> int:
    from app.api.keys import KeyEntry, digest, new_key, parse

    key = new_key()
    entry = KeyEntry(
        sha256=digest(key), tenant=args.tenant, scopes=sorted(set(args.scope)), name=args.name
    )
    line = msgspec.json.encode(entry).decode()
    parse(f'{{"keys": [{line}]}}'.encode(), "the new entry")  # a bad --tenant stops here
    # The key alone on stdout (KEY=$(rag-pipeline keys new ...)); it is stored nowhere.
    print(key)
    print(f"add to the keys file's `keys` list: {line}", file=sys.stderr)
    return 0


def _keys_check(args: argparse.Namespace, settings: Settings) -> int:
    from app.api.keys import parse

    try:
        entries = parse(args.file.read_bytes(), str(args.file))
    except OSError as exc:
        raise SettingsError(f"{args.file}: {exc}") from exc
    tenants = sorted({e.tenant for e in entries})
    print(f"{args.file}: {len(entries)} keys, tenants: {', '.join(tenants) or 'none'}")
    return 0


def _eval(args: argparse.Namespace, settings: Settings) -> int:
    from app.cli.evaluation import DEFAULT_VARIANTS, Variant, ensure_corpus, evaluate, format_table
    from app.client import Client

    async def run() -> int:
        async with Client(_url(args, settings), api_key=_api_key(args)) as client:
            loaded = await ensure_corpus(client, args.dataset)
            if loaded:
                log.info("ingested %d documents", loaded)
            variants = [] if args.only_diversity else list(DEFAULT_VARIANTS)
            variants += [
                Variant(f"default, diversity={d:g}", {"diversity": d}) for d in args.diversity
            ]
            scores = await evaluate(
                client, args.dataset, variants, split=args.split, limit=args.limit
            )
        if args.json:
            print(msgspec.json.encode(scores).decode())
        else:
            print(format_table(scores))
        return 0

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
