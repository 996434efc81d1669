"""Replay over HTTP: POST /api/v1/reindex starts one, GET /api/v1/reindex/{job_id} follows it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from app.api.jobs import followed, held_jobs, started
from app.api.schemas import ReindexJob
from app.bootstrap import IndexSide
from app.services.replay_jobs import ReplayJob, ReplayJobs


async def start(request: Request) -> Response:
    return started(held_jobs(request, _replays), "/api/v1/reindex", _wire)


async def status(request: Request) -> Response:
    return await followed(held_jobs(request, _replays), request.path_params["job_id"], _wire)


def _replays(side: IndexSide) -> ReplayJobs:
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
