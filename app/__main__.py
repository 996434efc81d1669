"""The `rag-pipeline` command: serve | worker | ingest | eval."""

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

from app.errors import RagError, SettingsError
from app.settings import Settings

if TYPE_CHECKING:
    from starlette.applications import Starlette

log = logging.getLogger("rag_pipeline")


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
    try:
        result: int = args.run(args, settings)
        return result
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

    ingest = sub.add_parser("ingest", help="send .txt/.md files or a BEIR corpus.jsonl to a server")
    ingest.add_argument("paths", nargs="+", type=Path)
    ingest.add_argument("--url", default=None, help="server URL (default http://RAG_HOST:RAG_PORT)")
    ingest.add_argument("--batch", type=int, default=64, help="documents per request")
    ingest.set_defaults(run=_ingest)

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
    ev.set_defaults(run=_eval)
    return parser


def _url(args: argparse.Namespace, settings: Settings) -> str:
    if args.url:
        return str(args.url)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return f"http://{host}:{settings.port}"


class _Closable(Protocol):
    async def aclose(self) -> None: ...


S = TypeVar("S", bound=_Closable)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from app.asgi import create_app
    from app.wiring import build_services

    return _run_http(args, settings, build_services, create_app, "serving")


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from app.asgi import create_worker_app
    from app.wiring import build_worker

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

    from app.adapters.embedded_redis import resolve_redis_url, supervise

    changes = {
        name: value
        for name, value in (("host", args.host), ("port", args.port), ("data_dir", args.data_dir))
        if value is not None
    }
    settings = settings.replace(**changes)
    config = Config()
    config.bind = [
        f"[{settings.host}]:{settings.port}"
        if ":" in settings.host
        else f"{settings.host}:{settings.port}"
    ]
    config.graceful_timeout = settings.graceful_timeout_seconds
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")

    url, embedded = resolve_redis_url(settings)
    settings = settings.replace(redis_url=url)

    async def run() -> None:
        # The embedded server is ours to keep up: nothing else would restart it.
        keeper = None if embedded is None else asyncio.create_task(supervise(embedded))
        services = await asyncio.to_thread(build, settings)
        try:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            log.info("%s on http://%s (data in %s)", what, config.bind[0], settings.data_path)
            app = make_app(settings, services)
            await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        finally:
            await services.aclose()
            if keeper is not None:
                keeper.cancel()

    try:
        asyncio.run(run())
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def _ingest(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from app.client import Client, send_batches
    from app.corpus import read_documents
    from app.schemas import IngestResponse

    docs = list(read_documents(args.paths))
    if not docs:
        print("rag-pipeline: no .txt, .md or .jsonl documents found", file=sys.stderr)
        return 1

    async def run() -> dict[str, int]:
        counts: dict[str, int] = {}
        async with Client(_url(args, settings)) as client:
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


def _eval(args: argparse.Namespace, settings: Settings) -> int:
    from app.client import Client
    from app.evaluation import DEFAULT_VARIANTS, Variant, ensure_corpus, evaluate, format_table

    async def run() -> int:
        async with Client(_url(args, settings)) as client:
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
