"""The reading status of a study: unread, in progress (who, since when), read (by whom, when).

Kept on the ``studies`` row (``reading_status``, ``reading_user``,
``reading_changed_at``) as a plain string checked here, not a database enum, so a
reporting feature can add ``preliminary`` and ``final`` by extending
:data:`STATUSES` (and :data:`ORDER`) without a schema change.

Changing it is an explicit act of a user (``PUT /api/v1/studies/{uid}/reading``);
nothing changes it implicitly: opening a study in the viewer does not, and new
instances arriving after a study was read leave it read (``changed_after_read``
tells).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, false, func, select, true, update

from hilum.domain.errors import InvalidQuery, NotFound
from hilum.index.database import write_transaction
from hilum.index.models import studies_t
from hilum.index.writer import index_write_lock

S = studies_t


class ReadingStatus(StrEnum):
    UNREAD = "unread"
    IN_PROGRESS = "in_progress"  # a radiologist has started reading
    READ = "read"  # finished


STATUSES = frozenset(s.value for s in ReadingStatus)
# Workflow order, for sorting lists by status (unread first when ascending).
ORDER = {ReadingStatus.UNREAD: 0, ReadingStatus.IN_PROGRESS: 1, ReadingStatus.READ: 2}

# A sortable rank of the status column (an unknown value, from a newer version, sorts last).
status_rank = case({s.value: rank for s, rank in ORDER.items()}, value=S.c.reading_status, else_=len(ORDER))
# Whether instances were stored (or removed) after the study was marked read: the study's
# updated_at moves with every change to its instances. To the second (SQLite's now()).
changed_after_read = case(
    (
        and_(S.c.reading_status == ReadingStatus.READ.value, S.c.updated_at > S.c.reading_changed_at),
        true(),
    ),
    else_=false(),
)


def parse_statuses(value: str) -> list[str]:
    """``unread,in_progress`` (or backslash-separated) -> the statuses; unknown ones refused.

    An empty value matches every study (as an empty matching key does in C-FIND)."""
    wanted = [v.strip() for v in value.replace("\\", ",").split(",") if v.strip()]
    unknown = [v for v in wanted if v not in STATUSES]
    if unknown:
        known = ", ".join(s.value for s in ReadingStatus)
        raise InvalidQuery(f"reading_status: {unknown[0][:40]!r} is not a reading status (use {known})")
    return list(dict.fromkeys(wanted))


def status_condition(statuses: list[str]) -> Any:
    """The condition on ``studies`` for a reading_status filter (None: no filter)."""
    if not statuses or set(statuses) >= STATUSES:
        return None
    if len(statuses) == 1:
        return S.c.reading_status == statuses[0]
    return S.c.reading_status.in_(statuses)


@dataclass(frozen=True, slots=True)
class ReadingState:
    study_instance_uid: str
    status: str
    user: str | None
    changed_at: datetime | None
    changed_after_read: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "reading_status": self.status,
            "reading_user": self.user,
            "reading_changed_at": self.changed_at,
            "changed_after_read": self.changed_after_read,
        }


class ReadingConflict(Exception):
    """Another user is reading the study (and the change was not forced)."""

    def __init__(self, current: ReadingState) -> None:
        super().__init__(f"{current.user} is reading this study")
        self.current = current


@dataclass(frozen=True, slots=True)
class ReadingChange:
    before: ReadingState
    after: ReadingState
    taken_over_from: str | None  # the user whose reading was taken over (force)

    @property
    def changed(self) -> bool:
        return self.before != self.after


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # SQLite keeps UTC without a zone
    return value


def _state(conn: Connection, uid: str, *, lock: bool = False) -> ReadingState | None:
    stmt = select(
        S.c.reading_status, S.c.reading_user, S.c.reading_changed_at, changed_after_read.label("after")
    ).where(S.c.study_instance_uid == uid)
    if lock:
        stmt = stmt.with_for_update()  # PostgreSQL: the row until commit (SQLite: BEGIN IMMEDIATE)
    row = conn.execute(stmt).first()
    if row is None:
        return None
    return ReadingState(uid, str(row[0]), row[1], _utc(row[2]), bool(row[3]))


def reading_state(engine: Engine, uid: str) -> ReadingState:
    with engine.connect() as conn:
        state = _state(conn, uid)
    if state is None:
        raise NotFound(f"no study {uid}")
    return state


def set_reading(
    engine: Engine, uid: str, status: ReadingStatus, user: str, *, force: bool = False
) -> ReadingChange:
    """Set a study's reading status as ``user``.

    Refused with :class:`ReadingConflict` when another user has the study in progress,
    unless ``force`` (taking over). Setting the status one already holds changes nothing,
    except ``read`` again, which acknowledges instances that arrived after the first.

    Read and write happen in one transaction that takes the write lock first (the
    writers' flock and BEGIN IMMEDIATE on SQLite, the row lock on PostgreSQL), so
    two radiologists claiming a study at once cannot both succeed, and SQLite never
    refuses the upgrade of a read transaction to a write one ("database is locked").
    """
    with index_write_lock(engine), write_transaction(engine) as conn:
        before = _state(conn, uid, lock=True)
        if before is None:
            raise NotFound(f"no study {uid}")
        taken_from = None
        if before.status == ReadingStatus.IN_PROGRESS and before.user != user:
            if not force:
                raise ReadingConflict(before)
            taken_from = before.user
        new_user = None if status is ReadingStatus.UNREAD else user
        if before.status == status and before.user == new_user and status is not ReadingStatus.READ:
            return ReadingChange(before, before, None)
        conn.execute(
            update(S)
            .where(S.c.study_instance_uid == uid)
            .values(reading_status=status.value, reading_user=new_user, reading_changed_at=func.now())
        )
        after = _state(conn, uid)
        assert after is not None
    return ReadingChange(before, after, taken_from)
