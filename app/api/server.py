"""Serve an ASGI app on Hypercorn at RAG_HOST:RAG_PORT until SIGTERM/SIGINT, then drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

from app.api.listener import Listener
from app.errors import RagError, SettingsError
from app.settings import Settings

if TYPE_CHECKING:
    from starlette.applications import Starlette

log = logging.getLogger("rag_pipeline")

# After SIGTERM, how long connections already in the accept queue are still taken in.
_ACCEPT_QUEUED_SECONDS = 0.2


async def serve(app: Starlette, settings: Settings, what: str) -> None:
    """Serve `app` until a signal, logging "`what` on http://HOST:PORT" once listening.

    A SettingsError if the address cannot be listened on; the RagError the app's lifespan
    start-up raised, if one did.
    """
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config
    from hypercorn.utils import LifespanFailureError

    config = Config()
    config.graceful_timeout = settings.graceful_timeout_seconds
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    where = (
        f"[{settings.host}]:{settings.port}"
        if ":" in settings.host
        else f"{settings.host}:{settings.port}"
    )
    try:
        listener = Listener(settings.host, settings.port, config.backlog)
    except OSError as exc:
        raise SettingsError(
            f"RAG_HOST/RAG_PORT: cannot listen on {where}: {exc.strerror or exc}"
        ) from exc
    try:
        config.bind = [listener.bind]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def drain() -> None:
            # /ready answers false from now on; new connections are dropped at the kernel,
            # those already queued are still accepted for a moment; then Hypercorn closes
            # the socket, lets requests in flight finish within RAG_GRACEFUL_TIMEOUT_SECONDS,
            # and the lifespan stops the projector and flushes the recorder.
            if getattr(app.state, "draining", False):
                return
            log.info("signal received: draining")
            app.state.draining = True
            filtered = listener.refuse_new()
            loop.call_later(_ACCEPT_QUEUED_SECONDS if filtered else 0.0, stop.set)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, drain)
        log.info("%s on http://%s (data in %s)", what, where, settings.data_path)
        try:
            await hypercorn_serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        except LifespanFailureError as exc:
            failed = _failed_startup(exc)
            if failed is None:
                raise
            # Hypercorn's error carries the app's traceback as text; the RagError that
            # stopped the start-up is the whole story (the command prints it on one line).
            raise failed from None
    finally:
        listener.close()


def _failed_startup(exc: BaseException) -> RagError | None:
    """The RagError an app's lifespan start-up raised. Starlette reports it to Hypercorn,
    which raises its LifespanFailureError while that error is being handled: the context."""
    seen = exc.__context__
    while seen is not None and not isinstance(seen, RagError):
        seen = seen.__context__
    return seen
