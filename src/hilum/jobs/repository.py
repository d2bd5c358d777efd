"""The job table: create, read, and the guarded state changes the runners make.

Every change a runner makes is an ``UPDATE ... WHERE id = :id AND state =
'running' AND owner = :me``; a rowcount of 0 means the job was cancelled or
taken over, and the runner stops. Claiming is ``UPDATE ... WHERE state =
'queued'``, so when several Hilum nodes share one index exactly one wins.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, case, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import DBAPIError

from hilum.domain.clock import aware as _aware
from hilum.domain.clock import utcnow
from hilum.domain.errors import HilumError, NotFound
from hilum.index.models import jobs_t

T = TypeVar("T")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
KINDS = ("store", "move")


class JobConflict(HilumError):
    """The job is not in a state that allows the asked change (HTTP 409)."""


def _iso(value: datetime | None) -> str | None:
    aware = _aware(value)
    return aware.isoformat(timespec="milliseconds").replace("+00:00", "Z") if aware else None


@dataclass(frozen=True)
class JobRecord:
    id: int
    kind: str
    state: str
    source: str | None
    destination: str
    params: dict[str, Any]
    step_state: dict[str, Any]
    total: int | None
    done: int
    failed: int
    bytes_sent: int
    attempts: int
    max_attempts: int
    retry_delay: float
    last_error: str | None
    owner: str | None
    heartbeat_at: datetime | None
    not_before: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> JobRecord:
        m = row._mapping
        return cls(
            id=int(m["id"]), kind=m["kind"], state=m["state"], source=m["source"],
            destination=m["destination"], params=json.loads(m["params_json"] or "{}"),
            step_state=json.loads(m["state_json"] or "{}"), total=m["total"], done=m["done"],
            failed=m["failed"], bytes_sent=int(m["bytes_sent"]), attempts=m["attempts"],
            max_attempts=m["max_attempts"], retry_delay=float(m["retry_delay"]),
            last_error=m["last_error"], owner=m["owner"],
            heartbeat_at=_aware(m["heartbeat_at"]), not_before=_aware(m["not_before"]),
            started_at=_aware(m["started_at"]), finished_at=_aware(m["finished_at"]),
            created_at=_aware(m["created_at"]), updated_at=_aware(m["updated_at"]),
        )

    @property
    def study_instance_uids(self) -> list[str]:
        return list(self.params.get("study_instance_uids", []))

    @property
    def series_instance_uid(self) -> str | None:
        value = self.params.get("series_instance_uid")
        return str(value) if value else None

    def to_json(self) -> dict[str, Any]:
        remaining = None
        if self.total is not None:
            remaining = max(self.total - self.done - self.failed, 0)
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "study_instance_uids": self.study_instance_uids,
            "series_instance_uid": self.series_instance_uid,
            "source": self.source,
            "destination": self.destination,
            "progress": {
                "total": self.total,
                "done": self.done,
                "failed": self.failed,
                "remaining": remaining,
                "bytes": self.bytes_sent,
            },
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "retry_delay": self.retry_delay,
            "last_error": self.last_error,
            "node": self.owner if self.state == RUNNING else None,
            "next_attempt_at": _iso(self.not_before) if self.state == QUEUED else None,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "updated_at": _iso(self.updated_at),
        }


def _retryable(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return any(s in text for s in ("locked", "busy", "deadlock", "serializ", "could not obtain"))


# Counts a run that was interrupted (crash, shutdown) does not use up an attempt.
_GIVE_BACK_ATTEMPT = case((jobs_t.c.attempts > 0, jobs_t.c.attempts - 1), else_=0)


class JobStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _write(self, work: Callable[[Connection], T]) -> T:
        """One write transaction (BEGIN IMMEDIATE on SQLite), retried when the index is busy."""
        for attempt in range(8):
            try:
                with self.engine.connect() as conn:
                    conn.info["sqlite_begin"] = "IMMEDIATE"
                    try:
                        with conn.begin():
                            return work(conn)
                    finally:
                        conn.info.pop("sqlite_begin", None)
            except DBAPIError as exc:
                if attempt == 7 or not _retryable(exc):
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _update(self, job_id: int, values: dict[str, Any], *conditions: Any) -> bool:
        stmt = (
            update(jobs_t)
            .where(jobs_t.c.id == job_id, *conditions)
            .values(updated_at=utcnow(), **values)
        )
        return bool(self._write(lambda conn: conn.execute(stmt).rowcount == 1))

    # -- API side ------------------------------------------------------------------
    def create(
        self,
        *,
        kind: str,
        destination: str,
        source: str | None,
        params: dict[str, Any],
        max_attempts: int,
        retry_delay: float,
    ) -> JobRecord:
        now = utcnow()
        stmt = (
            insert(jobs_t)
            .values(
                kind=kind, state=QUEUED, source=source, destination=destination,
                params_json=json.dumps(params), state_json="{}", done=0, failed=0,
                bytes_sent=0, attempts=0, max_attempts=max_attempts, retry_delay=retry_delay,
                created_at=now, updated_at=now,
            )
            .returning(jobs_t.c.id)
        )
        job_id = self._write(lambda conn: int(conn.execute(stmt).scalar_one()))
        return self.get(job_id)

    def get(self, job_id: int) -> JobRecord:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs_t).where(jobs_t.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"no job {job_id}")
        return JobRecord.from_row(row)

    def find(
        self, *, state: str | None = None, kind: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[JobRecord]:
        stmt = select(jobs_t).order_by(jobs_t.c.id.desc()).limit(limit).offset(offset)
        if state:
            stmt = stmt.where(jobs_t.c.state == state)
        if kind:
            stmt = stmt.where(jobs_t.c.kind == kind)
        with self.engine.connect() as conn:
            return [JobRecord.from_row(row) for row in conn.execute(stmt)]

    def cancel(self, job_id: int) -> JobRecord:
        """Queued jobs never start; a running one stops at its next progress save."""
        changed = self._update(
            job_id,
            {"state": CANCELLED, "finished_at": utcnow(), "not_before": None},
            jobs_t.c.state.in_((QUEUED, RUNNING)),
        )
        job = self.get(job_id)
        if not changed:
            raise JobConflict(f"job {job_id} is {job.state}; only queued or running jobs can be cancelled")
        return job

    def retry(self, job_id: int) -> JobRecord:
        """Queue a failed or cancelled job again, with fresh attempts; what was sent stays sent."""
        changed = self._update(
            job_id,
            {"state": QUEUED, "attempts": 0, "not_before": None, "finished_at": None, "owner": None},
            jobs_t.c.state.in_((FAILED, CANCELLED)),
        )
        job = self.get(job_id)
        if not changed:
            raise JobConflict(f"job {job_id} is {job.state}; only failed or cancelled jobs can be retried")
        return job

    # -- runner side ---------------------------------------------------------------
    def claim(self, owner: str) -> JobRecord | None:
        """Take the oldest due queued job for ``owner``, or None; atomic across nodes."""
        now = utcnow()
        with self.engine.connect() as conn:
            candidates = conn.execute(
                select(jobs_t.c.id)
                .where(
                    jobs_t.c.state == QUEUED,
                    or_(jobs_t.c.not_before.is_(None), jobs_t.c.not_before <= now),
                )
                .order_by(jobs_t.c.id)
                .limit(8)
            ).scalars().all()
        for job_id in candidates:
            claimed = self._update(
                job_id,
                {
                    "state": RUNNING, "owner": owner, "heartbeat_at": now, "not_before": None,
                    "attempts": jobs_t.c.attempts + 1,
                    "started_at": func.coalesce(jobs_t.c.started_at, now),
                },
                jobs_t.c.state == QUEUED,
            )
            if claimed:
                return self.get(job_id)
        return None

    def next_due(self) -> datetime | None:
        """When the earliest queued job becomes due (None: no queued job)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                select(func.min(func.coalesce(jobs_t.c.not_before, jobs_t.c.created_at)))
                .where(jobs_t.c.state == QUEUED)
            ).scalar()
        return _aware(value)

    def _mine(self, owner: str) -> tuple[Any, ...]:
        return (jobs_t.c.state == RUNNING, jobs_t.c.owner == owner)

    def save(self, job_id: int, owner: str, values: dict[str, Any]) -> bool:
        """Progress (and heartbeat) of a running job; False if it is no longer ours."""
        return self._update(job_id, {**values, "heartbeat_at": utcnow()}, *self._mine(owner))

    def finish(self, job_id: int, owner: str, state: str, values: dict[str, Any]) -> bool:
        return self._update(
            job_id, {**values, "state": state, "finished_at": utcnow(), "owner": None},
            *self._mine(owner),
        )

    def retry_later(
        self, job_id: int, owner: str, values: dict[str, Any], error: str, not_before: datetime
    ) -> bool:
        return self._update(
            job_id,
            {**values, "state": QUEUED, "owner": None, "last_error": error, "not_before": not_before},
            *self._mine(owner),
        )

    def release(self, job_id: int, owner: str, values: dict[str, Any]) -> bool:
        """Put a job this node stops running (shutdown) back in the queue, attempt unused."""
        return self._update(
            job_id, {**values, "state": QUEUED, "owner": None, "attempts": _GIVE_BACK_ATTEMPT},
            *self._mine(owner),
        )

    def requeue_owned(self, owner: str) -> int:
        """At start: jobs this node was running when it stopped without releasing them."""
        return self._requeue(jobs_t.c.owner == owner)

    def requeue_stale(self, older_than: datetime) -> int:
        """Jobs whose node stopped refreshing its claim (crashed, or cut off from the index)."""
        return self._requeue(
            or_(jobs_t.c.heartbeat_at.is_(None), jobs_t.c.heartbeat_at < older_than)
        )

    def _requeue(self, condition: Any) -> int:
        stmt = (
            update(jobs_t)
            .where(jobs_t.c.state == RUNNING, condition)
            .values(state=QUEUED, owner=None, attempts=_GIVE_BACK_ATTEMPT, updated_at=utcnow())
        )
        return int(self._write(lambda conn: conn.execute(stmt).rowcount))
