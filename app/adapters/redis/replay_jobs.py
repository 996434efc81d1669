"""ReplayJobStore in Redis: one JSON record per replay job, `{prefix}replay-job:{id}`, kept
for a week, so a job stays readable after the process that ran it restarts."""

from __future__ import annotations

import msgspec

from app.adapters.redis.client import RedisTarget, durable_client, translated
from app.services.replay_jobs import StoredReplayJob

JOB_STORE = "replay job store"  # how errors name this store
_TTL_SECONDS = 7 * 24 * 3600


class RedisReplayJobs:
    """Replay job records; see app/services/replay_jobs.py ReplayJobs for when they are written."""

    def __init__(
        self, target: RedisTarget | str, *, prefix: str = "rag:", pool_size: int = 2
    ) -> None:
        self._prefix = prefix
        self._redis = durable_client(
            target, pool_size=pool_size, socket_timeout=5.0, connect_timeout=2.0
        )

    def key(self, job_id: str) -> str:
        return f"{self._prefix}replay-job:{job_id}"

    async def save(self, job: StoredReplayJob) -> None:
        with translated(JOB_STORE, "SET"):
            await self._redis.set(self.key(job.job_id), msgspec.json.encode(job), ex=_TTL_SECONDS)

    async def load(self, job_id: str) -> StoredReplayJob | None:
        with translated(JOB_STORE, "GET"):
            raw = await self._redis.get(self.key(job_id))
        if raw is None:
            return None
        try:
            return msgspec.json.decode(raw, type=StoredReplayJob)
        except msgspec.DecodeError:
            return None  # written by an incompatible build: unknown here

    async def close(self) -> None:
        await self._redis.aclose()
