"""A study's reading status: ``GET`` it (anyone who sees the study), ``PUT`` it (radiologists).

``PUT /studies/{study}/reading`` ``{"status": "in_progress" | "read" | "unread",
"force": false}``. A study another user has in progress is refused with 409 (the
problem names who and since when) unless ``force`` is true: taking it over. Every
change is audited (DICOM Instances Accessed, action U); so is a refused claim.
The rules live in :mod:`hilum.index.reading`.
"""

from __future__ import annotations

import logging
from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from hilum.audit import builders, codes
from hilum.audit.http import requestor
from hilum.index.reading import ReadingConflict, ReadingState, ReadingStatus, reading_state, set_reading
from hilum.web.deps import ServicesDep, checked_uid
from hilum.web.problems import Problem
from hilum.web.security import principal_of

router = APIRouter()
LOG = logging.getLogger(__name__)


class ReadingChangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: ReadingStatus = Field(description="unread, in_progress (start reading) or read (finished)")
    force: bool = Field(False, description="take over a study another user has in progress")


class ReadingOut(BaseModel):
    study_instance_uid: str
    reading_status: str = Field(description="unread, in_progress or read")
    reading_user: str | None = Field(description="who is reading it (in_progress) or read it (read)")
    reading_changed_at: datetime | None = Field(description="when the status last changed")
    changed_after_read: bool = Field(
        description="read, but instances were stored or deleted after it was marked read"
    )


def _out(state: ReadingState) -> ReadingOut:
    return ReadingOut(**state.as_dict())


@router.get("/studies/{study_uid}/reading", summary="A study's reading status")
def get_reading(study_uid: str, services: ServicesDep) -> ReadingOut:
    uid = checked_uid(study_uid, "StudyInstanceUID")
    return _out(reading_state(services.engine, uid))


@router.put(
    "/studies/{study_uid}/reading",
    summary="Start reading a study, mark it read, or unread again",
    responses={409: {"description": "another user has the study in progress (force: true takes it over)"}},
)
def put_reading(study_uid: str, body: ReadingChangeIn, request: Request, services: ServicesDep) -> ReadingOut:
    uid = checked_uid(study_uid, "StudyInstanceUID")
    principal = principal_of(request)
    user = principal.username if principal is not None else "anonymous"
    try:
        change = set_reading(services.engine, uid, body.status, user, force=body.force)
    except ReadingConflict as conflict:
        current = conflict.current
        since = current.changed_at.isoformat(timespec="seconds") if current.changed_at else "earlier"
        _audit(request, services, uid, f"reading status {body.status.value} refused: in progress by "
               f"{current.user}", codes.MINOR_FAILURE)
        raise Problem(
            409,
            f"{current.user} is reading this study (since {since}); send force: true to take it over",
            reading_status=current.status,
            reading_user=current.user,
            reading_changed_at=since if current.changed_at else None,
        ) from None
    if change.changed:
        detail = f"reading status {change.before.status} -> {change.after.status}"
        if change.taken_over_from:
            detail += f" (taken over from {change.taken_over_from})"
        _audit(request, services, uid, detail, codes.SUCCESS)
    return _out(change.after)


def _audit(request: Request, services: ServicesDep, uid: str, detail: str, outcome: int) -> None:
    """DICOM Instances Accessed (PS3.15 A.5.3.5), action U: the study's status was updated."""
    audit = services.audit
    if not audit.enabled:
        return
    try:
        audit.record(builders.accessed(
            requestor=requestor(request.scope), node=audit.node(str(request.url)), studies={uid: {}},
            action="U", outcome=outcome, detail=detail,
        ))
    except Exception:  # auditing never breaks the answer
        LOG.exception("cannot audit the reading status of %s", uid)
