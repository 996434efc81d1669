"""When the projector tries again: entries held through an outage, and the backoff until then."""

from __future__ import annotations

import time

from app.domain.events import Entry

FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0


class Retries:
    """One projector's retry schedule for the entries that failed on it."""

    def __init__(self) -> None:
        self.at: float | None = None  # when to apply again what failed; None: nothing due
        self.delay = FIRST_BACKOFF_SECONDS
        self.failed_since_retry = False
        # Entries that failed while the index did not answer, kept for the retry.
        self.held: list[Entry] = []

    def schedule(self) -> None:
        """Something failed: retry it after the current delay, which doubles for next time."""
        self.failed_since_retry = True
        if self.at is None:
            self.at = time.monotonic() + self.delay
            self.delay = min(self.delay * 2, MAX_BACKOFF_SECONDS)
