"""Group commit: one writer thread applies index writes in batched transactions.

Handlers (one per association thread) submit an :class:`IndexWrite` and wait
on its future. While one transaction commits, new writes queue up and go into
the next one, so a burst of N instances costs far fewer than N fsyncs of the
database and of the storage directories. A write that fails inside a batch is
retried alone, so one bad instance never fails its neighbours.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError

from hilum.config import DuplicatePolicy
from hilum.dicom.parsing import ParsedInstance
from hilum.domain.attributes import Level, person_name_key
from hilum.domain.errors import IngestFailure, IngestStatus
from hilum.index.models import (
    changes_t,
    conflicts_t,
    instances_t,
    patients_t,
    series_t,
    studies_t,
)
from hilum.storage.base import CommitReceipt, StorageArea

LOG = logging.getLogger(__name__)


_PATIENT_CHECKED = ("patient_name", "patient_birth_date", "patient_sex")
MAX_BATCH = 128


@dataclass(slots=True)
class IndexWrite:
    parsed: ParsedInstance
    storage_key: str
    size: int
    sha256: str
    source: str
    receipt: CommitReceipt
    policy: DuplicatePolicy
    future: Future[WriteOutcome] = field(default_factory=Future)


@dataclass(slots=True)
class WriteOutcome:
    status: IngestStatus
    message: str = ""
    # Files to remove once the transaction is durable.
    obsolete_keys: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    new_study: bool = False
    new_series: bool = False


def patient_key(patient: dict[str, Any]) -> str:
    """PatientID + IssuerOfPatientID identify a patient; without an ID, name + birth date."""
    pid = (patient.get("patient_id") or "").strip()
    issuer = (patient.get("issuer_of_patient_id") or "").strip()
    if pid:
        return f"{pid}\x1f{issuer}"
    return f"\x1e{patient.get('patient_name') or ''}\x1f{patient.get('patient_birth_date') or ''}"


class IndexWriter:
    """The single writer of instance rows in one process."""

    def __init__(
        self,
        engine: Engine,
        storage: StorageArea,
        *,
        on_committed: Callable[[list[tuple[IndexWrite, WriteOutcome]]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.storage = storage
        self._queue: queue.Queue[IndexWrite | None] = queue.Queue()
        self._on_committed = on_committed
        self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
        self._started = False
        self._lock = threading.Lock()
        self.batches = 0
        self.writes = 0

    def start(self) -> None:
        with self._lock:
            if not self._started:
                self._thread.start()
                self._started = True

    def stop(self) -> None:
        with self._lock:
            if self._started:
                self._queue.put(None)
                self._thread.join(timeout=30)
                self._started = False

    def submit(self, write: IndexWrite) -> Future[WriteOutcome]:
        if not self._started:
            self.start()
        self._queue.put(write)
        return write.future

    # -- the writer thread ---------------------------------------------------
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._process(batch)
            if stop:
                return

    def _process(self, batch: list[IndexWrite]) -> None:
        try:
            self.storage.sync([w.receipt for w in batch])
        except OSError as exc:
            for write in batch:
                self._fail(write, IngestStatus.OUT_OF_RESOURCES, f"cannot sync storage: {exc}")
            return
        try:
            outcomes = self._transaction(batch)
        except Exception as exc:  # retry one by one to isolate the culprit
            if len(batch) > 1:
                LOG.debug("batch of %d failed (%s); retrying singly", len(batch), exc)
            outcomes = []
            for write in batch:
                try:
                    outcomes.extend(self._transaction([write]))
                except IngestFailure as failure:
                    self._fail(write, failure.status, failure.message)
                except Exception as single_exc:
                    LOG.exception("index write failed for %s", write.parsed.sop_instance_uid)
                    self._fail(write, IngestStatus.PROCESSING_FAILURE, f"index error: {single_exc}")
        self.batches += 1
        self.writes += len(outcomes)
        for write, outcome in outcomes:
            for key in outcome.obsolete_keys:
                try:
                    self.storage.delete(key)
                except OSError:
                    LOG.warning("could not remove obsolete file %s", key)
            write.future.set_result(outcome)
        if self._on_committed and outcomes:
            try:
                self._on_committed(outcomes)
            except Exception:
                LOG.exception("on_committed hook failed")

    def _fail(self, write: IndexWrite, status: IngestStatus, message: str) -> None:
        try:
            self.storage.delete(write.storage_key)
        except OSError:
            LOG.warning("could not remove refused file %s", write.storage_key)
        write.future.set_exception(IngestFailure(status, message))

    def _transaction(self, batch: list[IndexWrite]) -> list[tuple[IndexWrite, WriteOutcome]]:
        for attempt in range(8):
            try:
                with self.engine.connect() as conn:
                    conn.info["sqlite_begin"] = "IMMEDIATE"
                    try:
                        with conn.begin():
                            results = [(w, apply_write(conn, w)) for w in batch]
                            recount(conn, studies={_study_pk(conn, w) for w in batch})
                    finally:
                        conn.info.pop("sqlite_begin", None)
                return results
            except OperationalError as exc:  # locked database / serialization: try again
                if attempt == 7 or not _retryable(exc):
                    raise
                time.sleep(0.05 * (attempt + 1))
            except DBAPIError as exc:
                if attempt == 7 or not _retryable(exc):
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")


def _retryable(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return any(s in text for s in ("locked", "busy", "deadlock", "serializ", "could not obtain"))


def _study_pk(conn: Connection, write: IndexWrite) -> int:
    pk = conn.execute(
        select(studies_t.c.id).where(
            studies_t.c.study_instance_uid == write.parsed.study_instance_uid
        )
    ).scalar_one_or_none()
    return pk if pk is not None else -1


def _insert_ignore(conn: Connection, table: Any, values: dict[str, Any], unique: str) -> None:
    if conn.dialect.name == "postgresql":
        stmt: Any = postgresql.insert(table).values(values).on_conflict_do_nothing(
            index_elements=[unique]
        )
    else:
        stmt = sqlite.insert(table).values(values).on_conflict_do_nothing(index_elements=[unique])
    conn.execute(stmt)


def apply_write(conn: Connection, write: IndexWrite) -> WriteOutcome:
    """Apply one instance to the index inside the caller's transaction."""
    parsed = write.parsed
    outcome = WriteOutcome(status=IngestStatus.STORED)
    existing = conn.execute(
        select(instances_t.c.id, instances_t.c.sha256, instances_t.c.storage_key).where(
            instances_t.c.sop_instance_uid == parsed.sop_instance_uid
        )
    ).first()
    if existing is not None:
        if existing.sha256 == write.sha256 or write.policy is DuplicatePolicy.IGNORE:
            outcome.status = IngestStatus.ALREADY_STORED
            outcome.obsolete_keys.append(write.storage_key)
            return outcome
        if write.policy is DuplicatePolicy.REJECT:
            raise IngestFailure(
                IngestStatus.DUPLICATE_REJECTED,
                f"SOP Instance {parsed.sop_instance_uid} is already stored with different content",
            )
        conn.execute(delete(instances_t).where(instances_t.c.id == existing.id))
        outcome.status = IngestStatus.REPLACED
        outcome.obsolete_keys.append(existing.storage_key)

    # Patient
    key = patient_key(parsed.patient)
    patient_values = dict(parsed.patient)
    patient_values["patient_key"] = key
    patient_values["patient_name_key"] = person_name_key(patient_values.get("patient_name") or "")
    _insert_ignore(conn, patients_t, patient_values, "patient_key")
    patient_row = conn.execute(
        select(patients_t.c.id, *(patients_t.c[c] for c in _PATIENT_CHECKED)).where(
            patients_t.c.patient_key == key
        )
    ).one()
    for column in _PATIENT_CHECKED:
        stored, received = getattr(patient_row, column), parsed.patient.get(column)
        if stored and received and stored != received:
            outcome.conflicts.append(column)
            conn.execute(
                insert(conflicts_t).values(
                    patient_pk=patient_row.id,
                    sop_instance_uid=parsed.sop_instance_uid,
                    study_instance_uid=parsed.study_instance_uid,
                    attribute=column,
                    stored_value=stored,
                    received_value=received,
                )
            )

    # Study
    study_values = dict(parsed.study)
    study_values["patient_pk"] = patient_row.id
    study_values["referring_physician_name_key"] = person_name_key(
        study_values.get("referring_physician_name") or ""
    )
    study_row = conn.execute(
        select(studies_t.c.id, studies_t.c.patient_pk).where(
            studies_t.c.study_instance_uid == parsed.study_instance_uid
        )
    ).first()
    if study_row is None:
        _insert_ignore(conn, studies_t, study_values, "study_instance_uid")
        study_row = conn.execute(
            select(studies_t.c.id, studies_t.c.patient_pk).where(
                studies_t.c.study_instance_uid == parsed.study_instance_uid
            )
        ).one()
        outcome.new_study = True
    if study_row.patient_pk != patient_row.id:
        # The study is filed under another patient: keep it there, flag for QC.
        outcome.conflicts.append("patient_key")
        conn.execute(
            insert(conflicts_t).values(
                patient_pk=study_row.patient_pk,
                sop_instance_uid=parsed.sop_instance_uid,
                study_instance_uid=parsed.study_instance_uid,
                attribute="PatientID",
                stored_value=str(study_row.patient_pk),
                received_value=key.replace("\x1f", "^").replace("\x1e", ""),
            )
        )

    # Series
    series_values = dict(parsed.series)
    series_values["study_pk"] = study_row.id
    series_pk = conn.execute(
        select(series_t.c.id).where(series_t.c.series_instance_uid == parsed.series_instance_uid)
    ).scalar_one_or_none()
    if series_pk is None:
        _insert_ignore(conn, series_t, series_values, "series_instance_uid")
        series_pk = conn.execute(
            select(series_t.c.id).where(
                series_t.c.series_instance_uid == parsed.series_instance_uid
            )
        ).scalar_one()
        outcome.new_series = True

    # Instance
    instance_values = dict(parsed.instance)
    instance_values.update(
        series_pk=series_pk,
        transfer_syntax_uid=parsed.transfer_syntax_uid,
        storage_key=write.storage_key,
        size_bytes=write.size,
        sha256=write.sha256,
        source=write.source,
    )
    conn.execute(insert(instances_t).values(instance_values))
    conn.execute(
        insert(changes_t).values(
            kind="replaced" if outcome.status is IngestStatus.REPLACED else "stored",
            level=Level.IMAGE.value,
            resource_uid=parsed.sop_instance_uid,
            study_instance_uid=parsed.study_instance_uid,
        )
    )
    return outcome


def recount(conn: Connection, *, studies: set[int]) -> None:
    """Recompute the aggregate attributes of the given studies, their series and patients.

    Full recounts (not increments) keep them right after replace and delete too.
    """
    studies.discard(-1)
    if not studies:
        return
    now = func.now()
    for study_pk in sorted(studies):  # sorted: a stable lock order on PostgreSQL
        series_rows = conn.execute(
            select(
                series_t.c.id,
                series_t.c.modality,
                func.count(instances_t.c.id),
                func.coalesce(func.sum(instances_t.c.size_bytes), 0),
            )
            .select_from(series_t.outerjoin(instances_t, instances_t.c.series_pk == series_t.c.id))
            .where(series_t.c.study_pk == study_pk)
            .group_by(series_t.c.id, series_t.c.modality)
        ).all()
        for row in series_rows:
            conn.execute(
                update(series_t)
                .where(and_(series_t.c.id == row[0], series_t.c.num_instances != row[2]))
                .values(num_instances=row[2], updated_at=now)
            )
        sop_classes = conn.execute(
            select(instances_t.c.sop_class_uid)
            .distinct()
            .join(series_t, instances_t.c.series_pk == series_t.c.id)
            .where(series_t.c.study_pk == study_pk)
        ).scalars()
        modalities = sorted({r[1] for r in series_rows if r[1]})
        conn.execute(
            update(studies_t)
            .where(studies_t.c.id == study_pk)
            .values(
                num_series=len(series_rows),
                num_instances=sum(r[2] for r in series_rows),
                size_bytes=sum(r[3] for r in series_rows),
                modalities_in_study="\\".join(modalities),
                sop_classes_in_study="\\".join(sorted(sop_classes)),
                updated_at=now,
            )
        )
    patient_pks = conn.execute(
        select(studies_t.c.patient_pk).distinct().where(studies_t.c.id.in_(studies))
    ).scalars().all()
    recount_patients(conn, set(patient_pks))


def recount_patients(conn: Connection, patient_pks: set[int]) -> None:
    for patient_pk in sorted(patient_pks):
        totals = conn.execute(
            select(
                func.count(studies_t.c.id),
                func.coalesce(func.sum(studies_t.c.num_series), 0),
                func.coalesce(func.sum(studies_t.c.num_instances), 0),
            ).where(studies_t.c.patient_pk == patient_pk)
        ).one()
        conn.execute(
            update(patients_t)
            .where(patients_t.c.id == patient_pk)
            .values(
                num_studies=totals[0],
                num_series=totals[1],
                num_instances=totals[2],
                updated_at=func.now(),
            )
        )
