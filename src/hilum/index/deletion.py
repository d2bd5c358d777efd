"""Delete a patient, study, series or instance: index rows first, files after commit.

One transaction removes the instance rows, the series/studies/patients left
empty, records a ``deleted`` change per instance, series and study, and
recounts the parents that remain. It holds the same locks as the index writer
(the per-database flock on SQLite, the change-feed advisory lock on
PostgreSQL), so it never interleaves with a concurrent ingest batch and the
change feed stays in commit order.

Only after the commit are the stored files removed: a crash or a failed
removal leaves at most a file no row references (logged), never a row
without its file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, delete, insert, select

from hilum.domain.attributes import Level
from hilum.domain.errors import NotFound
from hilum.index.database import write_transaction
from hilum.index.models import (
    changes_t,
    conflicts_t,
    instances_t,
    patients_t,
    series_t,
    studies_t,
)
from hilum.index.writer import index_write_lock, lock_change_feed, recount, recount_patients
from hilum.storage.base import StorageArea

LOG = logging.getLogger(__name__)

P, S, SE, I = patients_t, studies_t, series_t, instances_t  # noqa: E741
_CHUNK = 500  # ids per IN (...) list


@dataclass
class DeletionResult:
    """What one deletion removed. ``files_left``: storage keys that could not be removed."""

    level: Level
    instances: int = 0
    series: int = 0
    studies: int = 0
    patients: int = 0
    files_removed: int = 0
    files_left: list[str] = field(default_factory=list)


def delete_instance(engine: Engine, storage: StorageArea, sop_instance_uid: str) -> DeletionResult:
    return _delete(engine, storage, Level.IMAGE, I.c.sop_instance_uid, sop_instance_uid)


def delete_series(engine: Engine, storage: StorageArea, series_instance_uid: str) -> DeletionResult:
    return _delete(engine, storage, Level.SERIES, SE.c.series_instance_uid, series_instance_uid)


def delete_study(engine: Engine, storage: StorageArea, study_instance_uid: str) -> DeletionResult:
    return _delete(engine, storage, Level.STUDY, S.c.study_instance_uid, study_instance_uid)


def delete_patient(engine: Engine, storage: StorageArea, patient_pk: int) -> DeletionResult:
    return _delete(engine, storage, Level.PATIENT, P.c.id, patient_pk)


def _delete(engine: Engine, storage: StorageArea, level: Level, column: Any, value: Any) -> DeletionResult:
    with index_write_lock(engine), write_transaction(engine) as conn:
        lock_change_feed(conn)
        result, keys = _delete_rows(conn, level, column, value)
    # Committed: no row references these files any more.
    for key in keys:
        try:
            storage.delete(key)
            result.files_removed += 1
        except OSError as exc:
            LOG.warning("deleted instance's file %s could not be removed: %s", key, exc)
            result.files_left.append(key)
    return result


def _delete_rows(conn: Connection, level: Level, column: Any, value: Any) -> tuple[DeletionResult, list[str]]:
    scope = _scope(conn, level, column, value)
    result = DeletionResult(level=level)
    instances = conn.execute(
        select(I.c.id, I.c.sop_instance_uid, I.c.storage_key, S.c.study_instance_uid)
        .select_from(I.join(SE, I.c.series_pk == SE.c.id).join(S, SE.c.study_pk == S.c.id))
        .where(scope.instances)
        .order_by(SE.c.id, I.c.id)
    ).all()
    if instances:
        conn.execute(
            insert(changes_t),
            [_change(Level.IMAGE, row.sop_instance_uid, row.study_instance_uid) for row in instances],
        )
        for chunk in _chunks([row.id for row in instances]):
            conn.execute(delete(I).where(I.c.id.in_(chunk)))
        for chunk in _chunks([row.sop_instance_uid for row in instances]):
            conn.execute(delete(conflicts_t).where(conflicts_t.c.sop_instance_uid.in_(chunk)))
    result.instances = len(instances)

    # Parents left empty go too; the others are recounted.
    empty_series = conn.execute(
        select(SE.c.id, SE.c.series_instance_uid, S.c.study_instance_uid)
        .select_from(SE.join(S, SE.c.study_pk == S.c.id))
        .where(SE.c.id.in_(scope.series), ~select(I.c.id).where(I.c.series_pk == SE.c.id).exists())
        .order_by(SE.c.id)
    ).all()
    if empty_series:
        conn.execute(
            insert(changes_t),
            [_change(Level.SERIES, r.series_instance_uid, r.study_instance_uid) for r in empty_series],
        )
        for chunk in _chunks([r.id for r in empty_series]):
            conn.execute(delete(SE).where(SE.c.id.in_(chunk)))
    result.series = len(empty_series)

    empty_studies = conn.execute(
        select(S.c.id, S.c.study_instance_uid)
        .where(S.c.id.in_(scope.studies), ~select(SE.c.id).where(SE.c.study_pk == S.c.id).exists())
        .order_by(S.c.id)
    ).all()
    if empty_studies:
        conn.execute(
            insert(changes_t),
            [_change(Level.STUDY, r.study_instance_uid, r.study_instance_uid) for r in empty_studies],
        )
        for chunk in _chunks([r.study_instance_uid for r in empty_studies]):
            conn.execute(delete(conflicts_t).where(conflicts_t.c.study_instance_uid.in_(chunk)))
        for chunk in _chunks([r.id for r in empty_studies]):
            conn.execute(delete(S).where(S.c.id.in_(chunk)))
    result.studies = len(empty_studies)

    remaining_studies = set(scope.studies) - {r.id for r in empty_studies}
    recounted = recount(conn, studies=set(remaining_studies)) if remaining_studies else set()
    empty_patients = conn.execute(
        select(P.c.id).where(
            P.c.id.in_(scope.patients), ~select(S.c.id).where(S.c.patient_pk == P.c.id).exists()
        )
    ).scalars().all()
    for chunk in _chunks(list(empty_patients)):
        conn.execute(delete(conflicts_t).where(conflicts_t.c.patient_pk.in_(chunk)))
        conn.execute(delete(P).where(P.c.id.in_(chunk)))
    result.patients = len(empty_patients)
    recount_patients(conn, set(scope.patients) - set(empty_patients) - recounted)
    return result, [row.storage_key for row in instances]


@dataclass
class _Scope:
    """The rows a deletion touches: a condition on instances, and the candidate parents."""

    instances: ColumnElement[bool]
    series: list[int]
    studies: list[int]
    patients: list[int]


def _scope(conn: Connection, level: Level, column: Any, value: Any) -> _Scope:
    tree = (
        select(P.c.id.label("patient"), S.c.id.label("study"), SE.c.id.label("series"))
        .select_from(
            P.outerjoin(S, S.c.patient_pk == P.c.id).outerjoin(SE, SE.c.study_pk == S.c.id)
        )
    )
    if level is Level.IMAGE:
        row = conn.execute(
            select(I.c.id, SE.c.id, S.c.id, S.c.patient_pk)
            .select_from(I.join(SE, I.c.series_pk == SE.c.id).join(S, SE.c.study_pk == S.c.id))
            .where(column == value)
        ).first()
        if row is None:
            raise NotFound(f"no instance {value}")
        return _Scope(I.c.id == row[0], [row[1]], [row[2]], [row[3]])
    rows = conn.execute(tree.where(column == value)).all()
    if not rows:
        raise NotFound(f"no {level.value.lower()} {value}")
    series = sorted({r.series for r in rows if r.series is not None})
    studies = sorted({r.study for r in rows if r.study is not None})
    patients = sorted({r.patient for r in rows})
    if level is Level.SERIES:
        condition = I.c.series_pk == series[0]
    elif level is Level.STUDY:
        condition = I.c.series_pk.in_(select(SE.c.id).where(SE.c.study_pk == studies[0]))
    else:
        condition = I.c.series_pk.in_(
            select(SE.c.id).join(S, SE.c.study_pk == S.c.id).where(S.c.patient_pk == patients[0])
        )
    return _Scope(condition, series, studies, patients)


def _change(level: Level, uid: str, study_instance_uid: str) -> dict[str, Any]:
    return {
        "kind": "deleted",
        "level": level.value,
        "resource_uid": uid,
        "study_instance_uid": study_instance_uid,
    }


def _chunks(values: Sequence[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield list(values[start : start + _CHUNK])
