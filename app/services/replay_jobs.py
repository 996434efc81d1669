"""Replay jobs: the replay `POST /api/v1/reindex` runs as a task, one at a time, and its
record, saved where it outlives the process (app/adapters/redis/replay_jobs.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

import msgspec

from app.errors import DependencyUnavailable, InvalidRequest
from app.ports import ReplayJobStore
from app.services.replay import Replay, ReplayProgress

log = logging.getLogger(__name__)

# A running job is saved every save_every seconds; this many intervals without a save and it
# is taken for abandoned.
_ABANDONED_AFTER = 10


class ReplayJob(msgspec.Struct, kw_only=True):
    """A replay this process runs or ran, as `POST/GET /api/v1/reindex` report it."""

    job_id: str
    progress: ReplayProgress


class StoredReplayJob(msgspec.Struct, frozen=True, kw_only=True):
    """A job as its store keeps it; `saved_at` tells a live job from an abandoned one."""

    job_id: str
    progress: ReplayProgress
    saved_at: float


class ReplayJobs:
    """At most one replay at a time in this process (the one that holds the index), run as
    a task. The job is also saved to `store` every `save_every` seconds and when it ends, so
    it can be followed after a restart, or from another process; a saved job that stopped
    being saved before it ended belonged to a process that is gone, and reads as failed."""

    def __init__(
        self,
        make: Callable[[], Replay],
        *,
        store: ReplayJobStore | None = None,
        save_every: float = 2.0,
    ) -> None:
        self._make = make
        self._store = store
        self._save_every = save_every
        self._job: ReplayJob | None = None
        self._task: asyncio.Task[ReplayProgress] | None = None

    def start(self) -> ReplayJob:
        if self._task is not None and not self._task.done():
            assert self._job is not None
            raise InvalidRequest(
                f"replay {self._job.job_id} is running; wait for it to finish",
                field=None,
                status=409,
                code="replay_running",
            )
        replay = self._make()
        job = self._job = ReplayJob(job_id=uuid.uuid4().hex, progress=replay.progress)
        self._task = asyncio.create_task(self._run(replay, job), name=f"replay-{job.job_id}")
        self._task.add_done_callback(_log_failure)
        return job

    async def get(self, job_id: str) -> ReplayJob | None:
        if self._job is not None and self._job.job_id == job_id:
            return self._job
        if self._store is None:
            return None
        stored = await self._store.load(job_id)
        if stored is None:
            return None
        progress = stored.progress
        abandoned = time.time() - stored.saved_at > _ABANDONED_AFTER * self._save_every
        if progress.phase not in ("done", "failed") and abandoned:
            progress = msgspec.structs.replace(
                progress,
                phase="failed",
                finished_at=stored.saved_at,
                error="interrupted: the process running it stopped (its new generation is "
                "removed when the index is next opened)",
            )
        return ReplayJob(job_id=stored.job_id, progress=progress)

    async def aclose(self) -> None:
        """Cancel a running replay (its generation is discarded) and wait for it."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self._store is not None:
            await self._store.close()

    async def _run(self, replay: Replay, job: ReplayJob) -> ReplayProgress:
        saving = asyncio.create_task(self._keep_saved(job))
        try:
            return await replay.run()
        finally:
            saving.cancel()
            # The last record says how it ended, even when the replay was cancelled.
            await asyncio.shield(self._save(job))

    async def _keep_saved(self, job: ReplayJob) -> None:
        while True:
            await self._save(job)
            await asyncio.sleep(self._save_every)

    async def _save(self, job: ReplayJob) -> None:
        if self._store is None:
            return
        record = StoredReplayJob(job_id=job.job_id, progress=job.progress, saved_at=time.time())
        try:
            await self._store.save(record)
        except DependencyUnavailable as exc:
            # The record only reports on the replay; it must not fail it.
            log.warning("could not save replay job %s: %s", job.job_id, exc)


def _log_failure(task: asyncio.Task[ReplayProgress]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("replay failed: %r", task.exception())
