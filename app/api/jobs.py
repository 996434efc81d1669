"""Jobs over HTTP (replay, compaction): a POST starts one in the process that holds the index,
a GET follows it by id, from this process or the job's saved record."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from app.api.codec import json_response
from app.bootstrap import IndexSide, held_index_side
from app.errors import DependencyUnavailable, NotFound
from app.services.jobs import Job, Jobs, P


def held_jobs(request: Request, kind: Callable[[IndexSide], Jobs[P]]) -> Jobs[P]:
    """The jobs of one kind of this process; 503 unless it holds the index, which these jobs
    write (or, for compaction, run beside the projector that holds it)."""
    side = held_index_side(request.app.state)
    if side is None:
        raise DependencyUnavailable("this process does not hold the index", retry_after=5.0)
    return kind(side)


def started(jobs: Jobs[P], path: str, wire: Callable[[Job[P]], msgspec.Struct]) -> Response:
    """Start a job: 202 with it and its Location (409 while one of its kind runs)."""
    job = jobs.start()
    return json_response(wire(job), 202, headers={"Location": f"{path}/{job.job_id}"})


async def followed(
    jobs: Jobs[P], job_id: str, wire: Callable[[Job[P]], msgspec.Struct]
) -> Response:
    """A job by id: 404 if neither this process nor the saved records know it."""
    job = await jobs.get(job_id)
    if job is None:
        raise NotFound(f"{jobs.kind} {job_id!r} is not known (job records are kept for a week)")
    return json_response(wire(job))
