"""Append, search and verify audit records in the index database.

Appending is serialized across every process that shares the database, so the
chain stays one line: on SQLite the writers' ``flock`` (the lock the index
writer holds) and ``BEGIN IMMEDIATE``; on PostgreSQL a transaction-scoped
advisory lock. Inside that lock the writer reads the last record's seq and hash
and chains the batch onto it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Select, func, insert, or_, select, text

from hilum.audit.builders import Patient
from hilum.audit.chain import GENESIS, Verification, record_hash, verify_rows
from hilum.audit.messages import truncate
from hilum.audit.models import audit_records_t
from hilum.domain.attributes import Level
from hilum.index.database import write_transaction
from hilum.index.models import instances_t, patients_t, series_t, studies_t
from hilum.index.writer import index_write_lock

# pg_advisory_xact_lock key of the audit chain ("audit" in ASCII).
AUDIT_CHAIN_LOCK = 0x6175646974
_VERIFY_CHUNK = 2000
A = audit_records_t.c


def append(engine: Engine, rows: Sequence[dict[str, Any]]) -> None:
    """Chain ``rows`` (every column but seq, prev_hash, hash) onto the log, in one transaction.

    Fills in ``seq``, ``prev_hash`` and ``hash`` of each row.
    """
    if not rows:
        return
    with index_write_lock(engine), write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_CHAIN_LOCK})
        last = conn.execute(select(A.seq, A.hash).order_by(A.seq.desc()).limit(1)).first()
        seq, prev_hash = (int(last.seq), str(last.hash)) if last else (0, GENESIS)
        for row in rows:
            seq += 1
            row["seq"] = seq
            row["prev_hash"] = prev_hash
            row["hash"] = prev_hash = record_hash(row)
        conn.execute(insert(audit_records_t), [_bind(conn, row) for row in rows])


def _bind(conn: Connection, row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "at": _db_time(conn, row["at"])}


def _db_time(conn: Connection, at: datetime) -> datetime:
    at = truncate(at)
    # SQLite keeps no zone: store UTC wall-clock time, read it back as UTC.
    return at.replace(tzinfo=None) if conn.dialect.name == "sqlite" else at


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    since: datetime | None = None
    until: datetime | None = None
    user: str | None = None
    patient_id: str | None = None
    study: str | None = None
    event: str | None = None  # EventID code or meaning, or EventTypeCode meaning
    outcome: int | None = None


def _like_member(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%|{escaped}|%"


def _filtered(conn: Connection, stmt: Select[Any], where: AuditFilter) -> Select[Any]:
    if where.since is not None:
        stmt = stmt.where(A.at >= _db_time(conn, where.since))
    if where.until is not None:
        stmt = stmt.where(A.at < _db_time(conn, where.until))
    if where.user:
        stmt = stmt.where(A.user_id == where.user)
    if where.patient_id:
        stmt = stmt.where(A.patient_ids.like(_like_member(where.patient_id), escape="\\"))
    if where.study:
        stmt = stmt.where(A.study_uids.like(_like_member(where.study), escape="\\"))
    if where.event:
        event = where.event.strip().lower()
        stmt = stmt.where(
            or_(
                A.event_code == event,
                func.lower(A.event) == event,
                func.lower(A.event_type).like(_like_member(event), escape="\\"),
            )
        )
    if where.outcome is not None:
        stmt = stmt.where(A.outcome == where.outcome)
    return stmt


def search(
    engine: Engine, where: AuditFilter, *, limit: int = 100, offset: int = 0, newest_first: bool = True
) -> list[dict[str, Any]]:
    """Records matching ``where`` (all conditions), as dicts with ``at`` in UTC."""
    with engine.connect() as conn:
        stmt = _filtered(conn, select(audit_records_t), where)
        stmt = stmt.order_by(A.seq.desc() if newest_first else A.seq).limit(limit).offset(offset)
        rows = conn.execute(stmt).mappings().all()
    return [_record(row) for row in rows]


def _record(row: Any) -> dict[str, Any]:
    record = dict(row)
    record["at"] = _utc(record["at"])
    return record


def members(value: str) -> list[str]:
    """``|a|b|`` -> ``["a", "b"]``."""
    return [v for v in value.split("|") if v]


def rows_in_order(engine: Engine) -> Iterator[dict[str, Any]]:
    """Every record by seq, read in chunks (a long log never sits in memory at once)."""
    after = -1
    while True:
        with engine.connect() as conn:
            chunk = conn.execute(
                select(audit_records_t).where(A.seq > after).order_by(A.seq).limit(_VERIFY_CHUNK)
            ).mappings().all()
        if not chunk:
            return
        for row in chunk:
            yield _record(row)
        after = int(chunk[-1]["seq"])


def verify(engine: Engine) -> Verification:
    return verify_rows(rows_in_order(engine))


def head(engine: Engine) -> tuple[int, str]:
    with engine.connect() as conn:
        last = conn.execute(select(A.seq, A.hash).order_by(A.seq.desc()).limit(1)).first()
    return (int(last.seq), str(last.hash)) if last else (0, GENESIS)


# -- who and what a record concerns, from the index ---------------------------------------------

def patients_of_studies(conn: Connection, study_uids: Sequence[str]) -> dict[str, Patient]:
    """The patient of each study that is in the index."""
    if not study_uids:
        return {}
    P, S = patients_t.c, studies_t.c
    rows = conn.execute(
        select(S.study_instance_uid, P.patient_id, P.issuer_of_patient_id, P.patient_name)
        .join_from(studies_t, patients_t, S.patient_pk == P.id)
        .where(S.study_instance_uid.in_(list(study_uids)))
    ).all()
    return {
        row.study_instance_uid: Patient(row.patient_id or "", row.issuer_of_patient_id or "",
                                           row.patient_name or "")
        for row in rows
    }


def subjects(conn: Connection, level: Level, uid: str) -> dict[str, Patient]:
    """Study UID -> patient for everything a resource (by its UID; patients by PatientID) covers."""
    P, S, R, N = patients_t.c, studies_t.c, series_t.c, instances_t.c
    stmt = select(S.study_instance_uid, P.patient_id, P.issuer_of_patient_id, P.patient_name).join_from(
        studies_t, patients_t, S.patient_pk == P.id
    )
    if level is Level.PATIENT:  # by PatientID, or by pk (the API accepts both)
        stmt = stmt.where(or_(P.patient_id == uid, P.id == int(uid)) if uid.isdigit() and len(uid) < 18
                          else P.patient_id == uid)
    elif level is Level.STUDY:
        stmt = stmt.where(S.study_instance_uid == uid)
    elif level is Level.SERIES:
        stmt = stmt.join(series_t, R.study_pk == S.id).where(R.series_instance_uid == uid)
    else:
        stmt = (
            stmt.join(series_t, R.study_pk == S.id)
            .join(instances_t, N.series_pk == R.id)
            .where(N.sop_instance_uid == uid)
        )
    return {
        row.study_instance_uid: Patient(row.patient_id or "", row.issuer_of_patient_id or "",
                                           row.patient_name or "")
        for row in conn.execute(stmt.limit(1000)).all()
    }
