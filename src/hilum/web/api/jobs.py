"""Jobs: send stored studies to a remote AE (C-STORE), or pull them from one (C-MOVE).

Jobs are durable: queued in the index, run by the job runner of the HTTP
process, retried with backoff, and resumed after a restart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from hilum.jobs.repository import JobConflict, JobRecord, JobStore
from hilum.jobs.runner import JobRunner
from hilum.jobs.service import InvalidJob, submit_job
from hilum.jobs.settings import JobSettings, job_settings
from hilum.web.deps import ServicesDep
from hilum.web.problems import Problem

router = APIRouter()

UID = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)]
State = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Kind = Literal["store", "move"]
# Listed kinds: also the jobs Hilum queues itself (share-copy: a de-identified share link's copies).
AnyKind = Literal["store", "move", "share-copy"]


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Kind
    study_instance_uid: UID | list[UID]
    series_instance_uid: UID | None = None
    # store: the remote AE name to send to; move: the AE title the source sends to
    # (default: Hilum's own AE title).
    destination: str | None = Field(default=None, min_length=1, max_length=64)
    # move: the remote AE name asked to C-MOVE.
    source: str | None = Field(default=None, min_length=1, max_length=64)
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    retry_delay: float | None = Field(default=None, ge=0, le=86400)


class JobProgress(BaseModel):
    total: int | None  # instances (move: as reported by the source so far)
    done: int
    failed: int
    remaining: int | None
    bytes: int  # bytes sent (store jobs; 0 for move jobs)


class JobOut(BaseModel):
    id: int
    kind: AnyKind
    state: State
    study_instance_uids: list[str]
    series_instance_uid: str | None
    source: str | None
    destination: str
    progress: JobProgress
    attempts: int
    max_attempts: int
    retry_delay: float
    last_error: str | None
    node: str | None
    next_attempt_at: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    updated_at: str | None


def _runner(request: Request) -> JobRunner | None:
    runner: JobRunner | None = getattr(request.app.state, "jobs", None)
    return runner


def _config(request: Request, services: Any) -> JobSettings:
    runner = _runner(request)
    return runner.config if runner is not None else job_settings(services.settings)


def _out(job: JobRecord) -> JobOut:
    return JobOut.model_validate(job.to_json())


def _wake(request: Request) -> None:
    runner = _runner(request)
    if runner is not None:
        runner.wake()


@router.post("/jobs", status_code=202)
def create_job(body: JobRequest, request: Request, response: Response, services: ServicesDep) -> JobOut:
    uids = body.study_instance_uid if isinstance(body.study_instance_uid, list) else [body.study_instance_uid]
    try:
        job = submit_job(
            services, JobStore(services.engine), _config(request, services),
            kind=body.kind, study_instance_uids=uids, series_instance_uid=body.series_instance_uid,
            destination=body.destination, source=body.source,
            max_attempts=body.max_attempts, retry_delay=body.retry_delay,
            requested_by=getattr(getattr(request.state, "principal", None), "username", "") or "",
        )
    except InvalidJob as exc:
        raise Problem(400, str(exc)) from None
    _wake(request)
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    return _out(job)


@router.get("/jobs")
def list_jobs(
    services: ServicesDep,
    state: State | None = None,
    kind: AnyKind | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[JobOut]:
    """Newest first."""
    jobs = JobStore(services.engine).find(state=state, kind=kind, limit=limit, offset=offset)
    return [_out(job) for job in jobs]


@router.get("/jobs/{job_id}")
def get_job(job_id: int, services: ServicesDep) -> JobOut:
    return _out(JobStore(services.engine).get(job_id))


@router.post("/jobs/{job_id}/retry", status_code=202)
def retry_job(job_id: int, request: Request, services: ServicesDep) -> JobOut:
    """Queue a failed or cancelled job again; instances it already sent are not sent again."""
    try:
        job = JobStore(services.engine).retry(job_id)
    except JobConflict as exc:
        raise Problem(409, str(exc)) from None
    _wake(request)
    return _out(job)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: int, request: Request, services: ServicesDep) -> JobOut:
    try:
        job = JobStore(services.engine).cancel(job_id)
    except JobConflict as exc:
        raise Problem(409, str(exc)) from None
    runner = _runner(request)
    if runner is not None:
        runner.cancelled(job_id)
    return _out(job)
