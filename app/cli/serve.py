"""`rag-pipeline serve` and `worker`: build the services, then serve their app until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from app.cli.options import add_listen_options, with_listen_options
from app.settings import Settings

if TYPE_CHECKING:
    from starlette.applications import Starlette


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `serve` and `worker` to the command's subparsers."""
    serve = sub.add_parser(
        "serve", help="serve the HTTP API (embedded defaults: nothing to configure)"
    )
    add_listen_options(serve)
    serve.set_defaults(run=serve_api)

    worker = sub.add_parser(
        "worker",
        help="apply document events to the index (the projector) without serving the API; "
        "answers /health and /ready on RAG_HOST:RAG_PORT",
    )
    add_listen_options(worker)
    worker.set_defaults(run=run_worker)


def serve_api(args: argparse.Namespace, settings: Settings) -> int:
    from app.api.asgi import create_app
    from app.bootstrap import build_services

    return _run(args, settings, build_services, create_app, "serving")


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from app.api.asgi import create_worker_app
    from app.bootstrap import build_worker

    return _run(args, settings, build_worker, create_worker_app, "projecting; probes")


class _Closable(Protocol):
    async def aclose(self) -> None: ...


S = TypeVar("S", bound=_Closable)


def _run(
    args: argparse.Namespace,
    settings: Settings,
    build: Callable[[Settings], S],
    make_app: Callable[[Settings, S], Starlette],
    what: str,
) -> int:
    """Build the services, then run their app until SIGTERM/SIGINT.

    The event log is the one REDIS_URL names or, when it is empty, the data directory's
    embedded Valkey: started here if none runs, and then stopped here on exit, after the
    services have closed. Services are built before the server starts, so a failure (say,
    the index is held by another process) ends the command with its message.
    """
    from app.api.server import serve
    from app.bootstrap import hosted_event_log
    from app.telemetry import tracing

    with hosted_event_log(with_listen_options(args, settings)) as host:
        settings = host.settings

        async def run() -> None:
            keeper = None if host.keep_up is None else asyncio.create_task(host.keep_up())
            services = await asyncio.to_thread(build, settings)
            try:
                await serve(make_app(settings, services), settings, what)
            finally:
                await services.aclose()
                if keeper is not None:
                    keeper.cancel()

        provider = tracing.install(settings)
        try:
            asyncio.run(run())
        finally:
            if provider is not None:
                provider.shutdown()  # exports the spans still batched
    return 0
