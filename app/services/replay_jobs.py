"""Replay jobs: the replay `POST /api/v1/reindex` runs as a job (app/services/jobs.py)."""

from __future__ import annotations

from collections.abc import Callable

from app.services.jobs import Job, Jobs, JobStore, StoredJob
from app.services.replay import Replay, ReplayProgress

ReplayJob = Job[ReplayProgress]
StoredReplayJob = StoredJob[ReplayProgress]


class ReplayJobs(Jobs[ReplayProgress]):
    """At most one replay at a time, in the process that holds the index."""

    def __init__(
        self,
        make: Callable[[], Replay],
        *,
        store: JobStore[ReplayProgress] | None = None,
        save_every: float = 2.0,
    ) -> None:
        super().__init__(
            "replay",
            make,
            store=store,
            save_every=save_every,
            interrupted="(its new generation is removed when the index is next opened)",
        )
