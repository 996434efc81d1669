"""Compaction over HTTP: POST /api/v1/compact starts one, GET .../{job_id} follows it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from app.api.jobs import followed, held_jobs, started
from app.api.schemas import CompactionJob
from app.bootstrap import IndexSide
from app.services.compaction import CompactionProgress
from app.services.jobs import Job, Jobs


async def start(request: Request) -> Response:
    return started(held_jobs(request, _compactions), "/api/v1/compact", _wire)


async def status(request: Request) -> Response:
    return await followed(held_jobs(request, _compactions), request.path_params["job_id"], _wire)


def _compactions(side: IndexSide) -> Jobs[CompactionProgress]:
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
