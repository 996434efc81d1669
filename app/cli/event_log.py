"""The event log a command runs against, for as long as the command runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from app.settings import Settings

if TYPE_CHECKING:
    from app.adapters.redis.embedded import EmbeddedRedis


@contextmanager
def event_log(settings: Settings) -> Iterator[tuple[Settings, EmbeddedRedis | None]]:
    """`settings` with REDIS_URL resolved, and the data directory's embedded Valkey when
    REDIS_URL is empty: found or started here, and stopped on exit if started here."""
    from app.bootstrap import resolve_event_log

    url, embedded = resolve_event_log(settings)
    try:
        yield settings.replace(redis_url=url), embedded
    finally:
        if embedded is not None:
            embedded.stop()
