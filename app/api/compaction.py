"""Compaction over HTTP: POST /api/v1/compact starts one, GET .../{job_id} follows it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from app.api.codec import json_response
from app.api.schemas import CompactionJob
from app.bootstrap import held_index_side
from app.errors import DependencyUnavailable, NotFound
from app.services.compaction import CompactionProgress
from app.services.jobs import Job, Jobs


async def start(request: Request) -> Response:
    job = _jobs(request).start()
    return json_response(_wire(job), 202, headers={"Location": f"/api/v1/compact/{job.job_id}"})


async def status(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    job = await _jobs(request).get(job_id)
    if job is None:
        raise NotFound(f"compaction {job_id!r} is not known (job records are kept for a week)")
    return json_response(_wire(job))


def _jobs(request: Request) -> Jobs[CompactionProgress]:
    side = held_index_side(request.app.state)
    if side is None:
        raise DependencyUnavailable("this process does not hold the index", retry_after=5.0)
    return side.compactions


def _wire(job: Job[CompactionProgress]) -> CompactionJob:
    p = job.progress
    return CompactionJob(
        job_id=job.job_id,
        phase=p.phase,
        entries_before=p.entries_before,
        documents=p.documents,
        read=p.read,
        kept=p.kept,
        superseded=p.superseded,
        tombstones=p.tombstones,
        pending_carried=p.pending_carried,
        entries_after=p.entries_after,
        seconds=round(p.seconds, 3),
        started_at=p.started_at,
        finished_at=p.finished_at,
        error=p.error,
    )
