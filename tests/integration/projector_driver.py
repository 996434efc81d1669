"""Drives a Projector step by step in tests, as its run loop does: join, recover, then steps."""

from __future__ import annotations

from app.services.projector import GROUP, Projector


async def start(projector: Projector) -> None:
    """Join the consumer group from the stream's start, then recover this consumer's own
    pending entries and those of dead consumers, as `Projector.run` does before reading."""
    await projector.log.ensure_group(projector.stream, GROUP, start="0")
    await projector.claims.recover()
