"""The change feed: every stored, replaced and deleted resource, in commit order.

``GET /api/v1/changes?since=<seq>`` answers the entries after ``seq``. Sequence
numbers only grow and commit in order (see
:func:`hilum.index.writer.lock_change_feed`), so a client that passes back
``last`` never misses or repeats an entry, across restarts too. Numbers can
have gaps (a rolled-back transaction uses one up).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import select

from hilum.index.models import changes_t
from hilum.web.deps import EngineDep

router = APIRouter()
MAX_LIMIT = 1000


class ChangeEntry(BaseModel):
    seq: int = Field(description="position in the feed; increasing, never reused")
    kind: Literal["stored", "replaced", "deleted"]
    level: Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
    resource_uid: str = Field(description="SOP Instance UID (IMAGE), Series or Study Instance UID")
    study_instance_uid: str
    at: datetime = Field(description="when it was committed (UTC)")


class ChangesPage(BaseModel):
    changes: list[ChangeEntry]
    last: int = Field(description="pass as `since` next time: the last seq answered, else `since`")
    done: bool = Field(description="true when no entry after `last` exists yet")


@router.get("/changes", response_model=ChangesPage)
def list_changes(
    engine: EngineDep,
    since: int = Query(0, ge=0, le=2**62, description="answer entries with seq > since"),
    limit: int = Query(100, ge=1, le=MAX_LIMIT, description="at most this many entries"),
) -> dict[str, Any]:
    """Changes after ``since``, oldest first."""
    c = changes_t.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(c.seq, c.kind, c.level, c.resource_uid, c.study_instance_uid, c.at)
            .where(c.seq > since)
            .order_by(c.seq)
            .limit(limit + 1)
        ).all()
    changes = [
        {
            "seq": row.seq,
            "kind": row.kind,
            "level": row.level,
            "resource_uid": row.resource_uid,
            "study_instance_uid": row.study_instance_uid,
            # SQLite keeps UTC timestamps without a zone.
            "at": row.at.replace(tzinfo=UTC) if row.at.tzinfo is None else row.at,
        }
        for row in rows[:limit]
    ]
    return {
        "changes": changes,
        "last": changes[-1]["seq"] if changes else since,
        "done": len(rows) <= limit,
    }
