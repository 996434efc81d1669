"""Jobs: a long operation (replay, compaction, erasure) run as a task, one at a time per kind in
a process, and its record, saved where it outlives the process (app/adapters/redis/jobs.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import msgspec

from app.errors import DependencyUnavailable, InvalidRequest

log = logging.getLogger(__name__)

# A running job is saved every save_every seconds; this many intervals without a save and it
# is taken for abandoned.
_ABANDONED_AFTER = 10

P = TypeVar("P", bound=msgspec.Struct)
P_co = TypeVar("P_co", bound=msgspec.Struct, covariant=True)


class JobProgress(msgspec.Struct, kw_only=True):
    """When a job started and ended, and why it failed: the part every job's progress shares."""

    started_at: float = 0.0
    finished_at: float | None = None
    error: str | None = None

    @property
    def seconds(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(0.0, end - self.started_at)


class Runnable(Protocol[P_co]):
    """What a job runs: an operation that reports its progress as it goes (a struct with
    `phase` ending "done" or "failed", `finished_at` and `error`)."""

    @property
    def progress(self) -> P_co: ...

    async def run(self) -> P_co: ...


class Job(msgspec.Struct, Generic[P], kw_only=True):
    """A job this process runs or ran, as its endpoints report it."""

    job_id: str
    progress: P


class StoredJob(msgspec.Struct, Generic[P], frozen=True, kw_only=True):
    """A job as its store keeps it; `saved_at` tells a live job from an abandoned one."""

    job_id: str
    progress: P
    saved_at: float


class JobStore(Protocol[P]):
    """Where job records of one kind outlive the process that ran them."""

    async def save(self, job: StoredJob[P]) -> None: ...

    async def load(self, job_id: str) -> StoredJob[P] | None: ...

    async def latest(self) -> StoredJob[P] | None:
        """The job of this kind that most recently ended "done", if one did this week."""
        ...

    async def close(self) -> None: ...


class Jobs(Generic[P]):
    """At most one job of this kind at a time in this process, run as a task. The job is also
    saved to `store` every `save_every` seconds and when it ends, so it can be followed after
    a restart, or from another process; a saved job that stopped being saved before it ended
    belonged to a process that is gone, and reads as failed (`interrupted` says what that
    leaves behind)."""

    def __init__(
        self,
        kind: str,
        make: Callable[[], Runnable[P]],
        *,
        store: JobStore[P] | None = None,
        save_every: float = 2.0,
        interrupted: str = "",
    ) -> None:
        self.kind = kind
        self._make = make
        self._store = store
        self._save_every = save_every
        self._interrupted = interrupted
        self._job: Job[P] | None = None
        self._task: asyncio.Task[P] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> Job[P]:
        if self.running:
            assert self._job is not None
            raise InvalidRequest(
                f"{self.kind} {self._job.job_id} is running; wait for it to finish",
                field=None,
                status=409,
                code=f"{self.kind}_running",
            )
        operation = self._make()
        job = self._job = Job(job_id=uuid.uuid4().hex, progress=operation.progress)
        self._task = asyncio.create_task(
            self._run(operation, job), name=f"{self.kind}-{job.job_id}"
        )
        self._task.add_done_callback(self._log_failure)
        return job

    async def wait(self) -> P | None:
        """The running job's final progress once it ends (None if none runs); raises as it did."""
        if self._task is None:
            return None
        return await asyncio.shield(self._task)

    async def get(self, job_id: str) -> Job[P] | None:
        if self._job is not None and self._job.job_id == job_id:
            return self._job
        if self._store is None:
            return None
        stored = await self._store.load(job_id)
        if stored is None:
            return None
        progress = stored.progress
        abandoned = time.time() - stored.saved_at > _ABANDONED_AFTER * self._save_every
        if getattr(progress, "phase", None) not in ("done", "failed") and abandoned:
            note = f" {self._interrupted}" if self._interrupted else ""
            progress = msgspec.structs.replace(
                progress,
                phase="failed",
                finished_at=stored.saved_at,
                error=f"interrupted: the process running it stopped{note}",
            )
        return Job(job_id=stored.job_id, progress=progress)

    async def aclose(self) -> None:
        """Cancel a running job and wait for it."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self._store is not None:
            await self._store.close()

    async def _run(self, operation: Runnable[P], job: Job[P]) -> P:
        saving = asyncio.create_task(self._keep_saved(job))
        try:
            return await operation.run()
        finally:
            saving.cancel()
            # The last record says how it ended, even when the job was cancelled.
            await asyncio.shield(self._save(job))

    async def _keep_saved(self, job: Job[P]) -> None:
        while True:
            await self._save(job)
            await asyncio.sleep(self._save_every)

    async def _save(self, job: Job[P]) -> None:
        if self._store is None:
            return
        record = StoredJob(job_id=job.job_id, progress=job.progress, saved_at=time.time())
        try:
            await self._store.save(record)
        except DependencyUnavailable as exc:
            # The record only reports on the job; it must not fail it.
            log.warning("could not save %s job %s: %s", self.kind, job.job_id, exc)

    def _log_failure(self, task: asyncio.Task[P]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %r", self.kind, task.exception())
