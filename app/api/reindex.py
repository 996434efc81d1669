"""Replay over HTTP: POST /api/v1/reindex starts one, GET /api/v1/reindex/{job_id} follows it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from app.api.codec import json_response
from app.api.schemas import ReindexJob
from app.bootstrap import held_index_side
from app.errors import DependencyUnavailable, NotFound
from app.services.replay_jobs import ReplayJob, ReplayJobs


async def start(request: Request) -> Response:
    job = _jobs(request).start()
    return json_response(_wire(job), 202, headers={"Location": f"/api/v1/reindex/{job.job_id}"})


async def status(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    job = await _jobs(request).get(job_id)
    if job is None:
        raise NotFound(f"replay {job_id!r} is not known (job records are kept for a week)")
    return json_response(_wire(job))


def _jobs(request: Request) -> ReplayJobs:
    side = held_index_side(request.app.state)
    if side is None:
        # Replays run in the process that holds the index: it alone may write it.
        raise DependencyUnavailable("this process does not hold the index", retry_after=5.0)
    return side.replays


def _wire(job: ReplayJob) -> ReindexJob:
    p = job.progress
    return ReindexJob(
        job_id=job.job_id,
        phase=p.phase,
        generation=p.generation,
        entries=p.entries,
        documents=p.documents,
        applied=p.applied,
        caught_up=p.caught_up,
        chunks=p.chunks,
        failed=p.failed,
        seconds=round(p.seconds, 3),
        started_at=p.started_at,
        finished_at=p.finished_at,
        error=p.error,
    )
