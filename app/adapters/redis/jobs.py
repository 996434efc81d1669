"""JobStore in Redis: one JSON record per job, `{prefix}{kind}-job:{id}`, kept for a week, so a
job stays readable after the process that ran it restarts."""

from __future__ import annotations

from typing import Generic

import msgspec

from app.adapters.redis.client import RedisTarget, durable_client, translated
from app.services.jobs import P, StoredJob
from app.services.replay import ReplayProgress

JOB_STORE = "job store"  # how errors name this store
_TTL_SECONDS = 7 * 24 * 3600


class RedisJobStore(Generic[P]):
    """Job records of one kind; see app/services/jobs.py Jobs for when they are written."""

    def __init__(
        self,
        target: RedisTarget | str,
        *,
        kind: str,
        progress: type[P],
        prefix: str = "rag:",
        pool_size: int = 2,
    ) -> None:
        self._prefix = prefix
        self._kind = kind
        self._type = StoredJob[progress]  # type: ignore[valid-type]
        self._redis = durable_client(
            target, pool_size=pool_size, socket_timeout=5.0, connect_timeout=2.0
        )

    def key(self, job_id: str) -> str:
        return f"{self._prefix}{self._kind}-job:{job_id}"

    async def save(self, job: StoredJob[P]) -> None:
        raw = msgspec.json.encode(job)
        with translated(JOB_STORE, "SET"):
            await self._redis.set(self.key(job.job_id), raw, ex=_TTL_SECONDS)
            if getattr(job.progress, "phase", None) == "done":
                await self._redis.set(self.key("latest"), raw, ex=_TTL_SECONDS)

    async def load(self, job_id: str) -> StoredJob[P] | None:
        return await self._get(self.key(job_id))

    async def latest(self) -> StoredJob[P] | None:
        return await self._get(self.key("latest"))

    async def _get(self, key: str) -> StoredJob[P] | None:
        with translated(JOB_STORE, "GET"):
            raw = await self._redis.get(key)
        if raw is None:
            return None
        try:
            stored: StoredJob[P] = msgspec.json.decode(raw, type=self._type)
        except msgspec.DecodeError:
            return None  # written by an incompatible build: unknown here
        return stored

    async def close(self) -> None:
        await self._redis.aclose()


class RedisReplayJobs(RedisJobStore[ReplayProgress]):
    """Replay job records, `{prefix}replay-job:{id}` (the key replays always had)."""

    def __init__(self, target: RedisTarget | str, *, prefix: str = "rag:") -> None:
        super().__init__(target, kind="replay", progress=ReplayProgress, prefix=prefix)
