"""Group commit: one writer thread applies index writes in batched transactions.

Handlers (one per association thread) submit an :class:`IndexWrite` and wait
on its future. While one transaction commits, new writes queue up and go into
the next one, so a burst of N instances costs far fewer than N fsyncs of the
database and of the storage directories. A write that fails inside a batch is
retried alone, so one bad instance never fails its neighbours.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError

from hilum.config import DuplicatePolicy
from hilum.dicom.parsing import ParsedInstance
from hilum.domain.attributes import Level, person_name_key
from hilum.domain.errors import IngestFailure, IngestStatus, out_of_space
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


# Patient attributes compared with the stored patient: column -> DICOM keyword.
_PATIENT_CHECKED = {
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
}
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
    dicom_json: bytes | None = None
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
        # Called (from the writer thread) when that thread stops on an unexpected error:
        # `hilum serve`'s workers exit then, and a new worker takes their place.
        self.on_failure: Callable[[str], None] | None = None
        self._thread: threading.Thread | None = None
        self._sync_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storage-sync")
        self._lock = threading.Lock()  # start / stop
        self._state = threading.Lock()  # whether submit() may queue: held around each put
        self._accepting = False
        self._stopped = False
        self._failure: str | None = None
        self.batches = 0
        self.writes = 0
        self._process_lock = _writer_lock_for(engine)

    def start(self) -> None:
        """Start the writer thread (a new one each time: a Thread runs only once)."""
        with self._lock, self._state:
            if self._thread is None or not self._thread.is_alive():
                self._failure = None
                self._stopped = False
                self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
                self._thread.start()
            self._accepting = True

    def stop(self) -> None:
        """Write what is queued, then stop; later submissions fail (no restart)."""
        with self._lock:
            with self._state:
                self._accepting = False
                self._stopped = True
                thread = self._thread
                if thread is None or not thread.is_alive():
                    return
                self._queue.put(None)
            thread.join(timeout=30)

    def submit(self, write: IndexWrite) -> Future[WriteOutcome]:
        """Queue ``write``; an IngestFailure at once if the writer has stopped or failed."""
        if not self._accepting and not self._stopped and self._failure is None:
            self.start()  # first use
        with self._state:
            if not self._accepting:
                reason = self._failure or "the index writer has stopped"
                raise IngestFailure(IngestStatus.PROCESSING_FAILURE, reason)
            self._queue.put(write)
        return write.future

    @property
    def failure(self) -> str | None:
        """Why the writer thread stopped on its own, or None."""
        return self._failure

    # -- the writer thread ---------------------------------------------------
    def _run(self) -> None:
        batch: list[IndexWrite] = []
        try:
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
                batch = []
                if stop:
                    return
        except BaseException as exc:  # the thread must not end silently with writes waiting
            LOG.exception("the index writer stopped")
            self._failed(batch, f"the index writer stopped: {type(exc).__name__}: {exc}")

    def _failed(self, batch: list[IndexWrite], reason: str) -> None:
        with self._state:
            self._accepting = False
            self._failure = reason
            while True:  # nothing more can be queued: fail what is
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    batch.append(item)
        for write in batch:
            if not write.future.done():
                write.future.set_exception(IngestFailure(IngestStatus.PROCESSING_FAILURE, reason))
        if self.on_failure is not None:
            self.on_failure(reason)

    def _process(self, batch: list[IndexWrite]) -> None:
        # Make the files durable first, outside the index write lock: that lock
        # is shared by every receiving process, so it is held only for the SQL.
        sync = self._sync_pool.submit(self.storage.sync, [w.receipt for w in batch])

        def wait_for_sync() -> None:
            try:
                sync.result()
            except OSError as exc:
                raise _SyncFailed(exc) from exc

        try:
            wait_for_sync()
            outcomes = self._transaction(batch, before_commit=wait_for_sync)
        except _SyncFailed as failed:
            for write in batch:
                self._fail(
                    write, IngestStatus.OUT_OF_RESOURCES, f"cannot sync storage: {failed.__cause__}"
                )
            return
        except Exception as exc:  # retry one by one to isolate the culprit
            if len(batch) > 1:
                LOG.debug("batch of %d failed (%s); retrying singly", len(batch), exc)
            outcomes = []
            for write in batch:
                try:
                    outcomes.extend(self._transaction([write], before_commit=wait_for_sync))
                except _SyncFailed as failed:
                    self._fail(
                        write,
                        IngestStatus.OUT_OF_RESOURCES,
                        f"cannot sync storage: {failed.__cause__}",
                    )
                except IngestFailure as failure:
                    self._fail(write, failure.status, failure.message)
                except Exception as single_exc:
                    if out_of_space(single_exc):  # the index's disk is full: 0xA700 / 507, retried later
                        LOG.warning("index write refused for %s: out of space: %s",
                                    write.parsed.sop_instance_uid, single_exc)
                        self._fail(write, IngestStatus.OUT_OF_RESOURCES, f"index out of space: {single_exc}")
                        continue
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

    def _transaction(
        self, batch: list[IndexWrite], before_commit: Callable[[], None] | None = None
    ) -> list[tuple[IndexWrite, WriteOutcome]]:
        for attempt in range(8):
            try:
                with self._process_lock, self.engine.connect() as conn:
                    conn.info["sqlite_begin"] = "IMMEDIATE"
                    try:
                        with conn.begin():
                            lock_change_feed(conn)
                            aggregates = Aggregates()
                            results = [(w, apply_write(conn, w, aggregates)) for w in batch]
                            aggregates.apply(conn)
                            if before_commit is not None:
                                before_commit()
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


class _FileLock:
    """An exclusive flock held around each SQLite write transaction.

    Writers in several receiving processes otherwise meet in SQLite's busy
    handler, which sleeps and polls (1, 2, 5, 10 ... 100 ms); a blocked flock
    wakes the next writer as soon as the lock is released.
    """

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *_exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


def _writer_lock_for(engine: Engine) -> Any:
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        return _FileLock(database + ".writer-lock")
    return contextlib.nullcontext()


@contextlib.contextmanager
def index_write_lock(engine: Engine) -> Iterator[None]:
    """Hold the writers' per-database lock once, for a writer outside IndexWriter (deletion)."""
    lock = _writer_lock_for(engine)
    try:
        with lock:
            yield
    finally:
        if isinstance(lock, _FileLock):
            lock.close()


# pg_advisory_xact_lock key of the change feed ("hilum" in ASCII).
CHANGE_FEED_LOCK = 0x68696C756D


def lock_change_feed(conn: Connection) -> None:
    """Call first in every transaction that may append to ``changes``.

    A sequence hands out numbers when a row is inserted, but the row becomes
    visible when its transaction commits: two writers in different processes
    could commit seq 10 before seq 9, and a reader that has seen 10 would never
    see 9. One transaction-scoped lock held from the start of each writing
    transaction to its commit makes commit order equal sequence order on
    PostgreSQL. On SQLite, BEGIN IMMEDIATE serializes writers already.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHANGE_FEED_LOCK})


class _SyncFailed(Exception):
    """The storage area could not make a batch durable: nothing may be indexed."""


def _retryable(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return any(s in text for s in ("locked", "busy", "deadlock", "serializ", "could not obtain"))


class _Statements:
    """Statements built once per dialect: building Core statements per row costs more
    than running them (SQLAlchemy's cache key generation), so rows only bind values."""

    def __init__(self, dialect: str) -> None:
        insert_for = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self.select_instance = select(
            instances_t.c.id, instances_t.c.sha256, instances_t.c.storage_key
        ).where(instances_t.c.sop_instance_uid == bindparam("uid"))
        self.delete_instance = delete(instances_t).where(instances_t.c.id == bindparam("pk"))
        patient_columns = (
            patients_t.c.id,
            patients_t.c.patient_key,
            patients_t.c.patient_id,
            *(patients_t.c[c] for c in _PATIENT_CHECKED),
        )
        self.select_patient = select(*patient_columns).where(patients_t.c.patient_key == bindparam("key"))
        self.select_patient_by_pk = select(*patient_columns).where(patients_t.c.id == bindparam("pk"))
        self.insert_patient = insert_for(patients_t).on_conflict_do_nothing(index_elements=["patient_key"])
        self.select_study = select(
            studies_t.c.id, studies_t.c.patient_pk, studies_t.c.sop_classes_in_study
        ).where(studies_t.c.study_instance_uid == bindparam("uid"))
        self.add_to_series = (
            update(series_t)
            .where(series_t.c.id == bindparam("pk"))
            .values(num_instances=series_t.c.num_instances + bindparam("n"), updated_at=func.now())
        )
        self.add_to_study = (
            update(studies_t)
            .where(studies_t.c.id == bindparam("pk"))
            .values(
                num_instances=studies_t.c.num_instances + bindparam("n"),
                num_series=studies_t.c.num_series + bindparam("new_series"),
                size_bytes=studies_t.c.size_bytes + bindparam("size"),
                updated_at=func.now(),
            )
        )
        self.add_to_patient = (
            update(patients_t)
            .where(patients_t.c.id == bindparam("pk"))
            .values(
                num_instances=patients_t.c.num_instances + bindparam("n"),
                num_series=patients_t.c.num_series + bindparam("new_series"),
                num_studies=patients_t.c.num_studies + bindparam("new_studies"),
                updated_at=func.now(),
            )
        )
        self.study_modalities = (
            select(series_t.c.modality)
            .distinct()
            .where(series_t.c.study_pk == bindparam("study_pk"), series_t.c.modality.is_not(None))
        )
        self.set_study_modalities = (
            update(studies_t)
            .where(studies_t.c.id == bindparam("pk"))
            .values(modalities_in_study=bindparam("modalities"))
        )
        self.set_study_sop_classes = (
            update(studies_t)
            .where(studies_t.c.id == bindparam("pk"))
            .values(sop_classes_in_study=bindparam("sop_classes"))
        )
        self.insert_study = insert_for(studies_t).on_conflict_do_nothing(
            index_elements=["study_instance_uid"]
        )
        self.select_series = select(series_t.c.id).where(series_t.c.series_instance_uid == bindparam("uid"))
        self.insert_series = insert_for(series_t).on_conflict_do_nothing(
            index_elements=["series_instance_uid"]
        )
        self.insert_instance = insert(instances_t)
        self.insert_change = insert(changes_t)
        self.insert_conflict = insert(conflicts_t)
        self.series_totals = (
            select(
                series_t.c.id,
                series_t.c.modality,
                series_t.c.num_instances,
                func.count(instances_t.c.id),
                func.coalesce(func.sum(instances_t.c.size_bytes), 0),
            )
            .select_from(series_t.outerjoin(instances_t, instances_t.c.series_pk == series_t.c.id))
            .where(series_t.c.study_pk == bindparam("study_pk"))
            .group_by(series_t.c.id, series_t.c.modality, series_t.c.num_instances)
        )
        self.update_series = (
            update(series_t)
            .where(series_t.c.id == bindparam("pk"))
            .values(num_instances=bindparam("n"), updated_at=func.now())
        )
        self.study_sop_classes = (
            select(instances_t.c.sop_class_uid)
            .distinct()
            .join(series_t, instances_t.c.series_pk == series_t.c.id)
            .where(series_t.c.study_pk == bindparam("study_pk"))
        )
        self.update_study = (
            update(studies_t)
            .where(studies_t.c.id == bindparam("pk"))
            .values(
                num_series=bindparam("num_series"),
                num_instances=bindparam("num_instances"),
                size_bytes=bindparam("size_bytes"),
                modalities_in_study=bindparam("modalities"),
                sop_classes_in_study=bindparam("sop_classes"),
                updated_at=func.now(),
            )
        )
        self.study_patients = select(studies_t.c.patient_pk).where(studies_t.c.id == bindparam("pk"))
        self.patient_totals = select(
            func.count(studies_t.c.id),
            func.coalesce(func.sum(studies_t.c.num_series), 0),
            func.coalesce(func.sum(studies_t.c.num_instances), 0),
        ).where(studies_t.c.patient_pk == bindparam("pk"))
        self.update_patient = (
            update(patients_t)
            .where(patients_t.c.id == bindparam("pk"))
            .values(
                num_studies=bindparam("num_studies"),
                num_series=bindparam("num_series"),
                num_instances=bindparam("num_instances"),
                updated_at=func.now(),
            )
        )


_STATEMENTS: dict[str, _Statements] = {}


def statements(conn: Connection) -> _Statements:
    name = conn.dialect.name
    found = _STATEMENTS.get(name)
    if found is None:
        found = _STATEMENTS[name] = _Statements(name)
    return found


def apply_write(
    conn: Connection, write: IndexWrite, aggregates: Aggregates | None = None
) -> WriteOutcome:
    """Apply one instance to the index inside the caller's transaction.

    ``aggregates`` collects what the study/series/patient counters must add (or, after
    a replacement, which studies need a full recount); apply it before commit.
    """
    q = statements(conn)
    parsed = write.parsed
    outcome = WriteOutcome(status=IngestStatus.STORED)
    existing = conn.execute(q.select_instance, {"uid": parsed.sop_instance_uid}).first()
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
        old_study = conn.execute(
            select(series_t.c.study_pk)
            .join(instances_t, instances_t.c.series_pk == series_t.c.id)
            .where(instances_t.c.id == existing.id)
        ).scalar_one()
        if aggregates is not None:
            aggregates.recount_studies.add(old_study)
        conn.execute(q.delete_instance, {"pk": existing.id})
        outcome.status = IngestStatus.REPLACED
        outcome.obsolete_keys.append(existing.storage_key)

    # Study first: an existing study stays with the patient it is filed under.
    key = patient_key(parsed.patient)
    study_row = conn.execute(q.select_study, {"uid": parsed.study_instance_uid}).first()
    if study_row is not None:
        patient_row = conn.execute(q.select_patient_by_pk, {"pk": study_row.patient_pk}).one()
        if patient_row.patient_key != key:
            # The instance names another patient than its study: flag it for QC.
            _conflict(
                conn,
                q,
                outcome,
                parsed,
                patient_row.id,
                "PatientID",
                patient_row.patient_id,
                parsed.patient.get("patient_id") or "",
            )
    else:
        found = conn.execute(q.select_patient, {"key": key}).first()
        if found is not None:
            patient_row = found
        else:
            patient_values = dict(parsed.patient)
            patient_values["patient_key"] = key
            patient_values["patient_name_key"] = person_name_key(patient_values.get("patient_name") or "")
            conn.execute(q.insert_patient, patient_values)
            patient_row = conn.execute(q.select_patient, {"key": key}).one()
        study_values = dict(parsed.study)
        study_values["patient_pk"] = patient_row.id
        study_values["referring_physician_name_key"] = person_name_key(
            study_values.get("referring_physician_name") or ""
        )
        conn.execute(q.insert_study, study_values)
        study_row = conn.execute(q.select_study, {"uid": parsed.study_instance_uid}).one()
        outcome.new_study = True
    if patient_row.patient_key == key:
        # Same patient, different demographics: keep the stored ones, flag for QC.
        for column, keyword in _PATIENT_CHECKED.items():
            stored, received = getattr(patient_row, column), parsed.patient.get(column)
            if stored and received and stored != received:
                _conflict(conn, q, outcome, parsed, patient_row.id, keyword, stored, received)

    # Series
    series_pk = conn.execute(q.select_series, {"uid": parsed.series_instance_uid}).scalar()
    if series_pk is None:
        series_values = dict(parsed.series)
        series_values["study_pk"] = study_row.id
        conn.execute(q.insert_series, series_values)
        series_pk = conn.execute(q.select_series, {"uid": parsed.series_instance_uid}).scalar_one()
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
        dicom_json=write.dicom_json,
    )
    conn.execute(q.insert_instance, instance_values)
    if aggregates is not None:
        if outcome.status is IngestStatus.REPLACED:
            aggregates.recount_studies.add(study_row.id)
        else:
            known_classes = (study_row.sop_classes_in_study or "").split("\\")
            aggregates.add(
                series_pk=series_pk,
                study_pk=study_row.id,
                patient_pk=patient_row.id,
                size=write.size,
                new_series=outcome.new_series,
                new_study=outcome.new_study,
                new_sop_class=parsed.sop_class_uid not in known_classes,
            )
    conn.execute(
        q.insert_change,
        {
            "kind": "replaced" if outcome.status is IngestStatus.REPLACED else "stored",
            "level": Level.IMAGE.value,
            "resource_uid": parsed.sop_instance_uid,
            "study_instance_uid": parsed.study_instance_uid,
        },
    )
    return outcome


@dataclass
class Aggregates:
    """Counter changes of one batch, applied in a few statements before commit.

    New instances add to their series, study and patient counters (O(1) per
    batch, whatever the study's size); a replaced instance makes its studies
    recount from scratch.
    """

    recount_studies: set[int] = field(default_factory=set)
    series: dict[int, int] = field(default_factory=dict)
    # study pk -> [instances, bytes, new series, needs modalities, needs SOP classes]
    studies: dict[int, list[int]] = field(default_factory=dict)
    # patient pk -> [instances, new series, new studies]
    patients: dict[int, list[int]] = field(default_factory=dict)
    series_study: dict[int, int] = field(default_factory=dict)

    def add(
        self,
        *,
        series_pk: int,
        study_pk: int,
        patient_pk: int,
        size: int,
        new_series: bool,
        new_study: bool,
        new_sop_class: bool,
    ) -> None:
        self.series[series_pk] = self.series.get(series_pk, 0) + 1
        study = self.studies.setdefault(study_pk, [0, 0, 0, 0, 0])
        study[0] += 1
        study[1] += size
        study[2] += int(new_series)
        study[3] |= int(new_series)
        study[4] |= int(new_sop_class)
        patient = self.patients.setdefault(patient_pk, [0, 0, 0])
        patient[0] += 1
        patient[1] += int(new_series)
        patient[2] += int(new_study)
        self.series_study[series_pk] = study_pk

    def apply(self, conn: Connection) -> None:
        q = statements(conn)
        skip = self.recount_studies
        for series_pk, n in sorted(self.series.items()):
            if self.series_study[series_pk] not in skip:
                conn.execute(q.add_to_series, {"pk": series_pk, "n": n})
        for study_pk, (n, size, new_series, modalities, sop_classes) in sorted(self.studies.items()):
            if study_pk in skip:
                continue
            conn.execute(
                q.add_to_study, {"pk": study_pk, "n": n, "new_series": new_series, "size": size}
            )
            if modalities:
                found = conn.execute(q.study_modalities, {"study_pk": study_pk}).scalars()
                conn.execute(
                    q.set_study_modalities,
                    {"pk": study_pk, "modalities": "\\".join(sorted(found))},
                )
            if sop_classes:
                found = conn.execute(q.study_sop_classes, {"study_pk": study_pk}).scalars()
                conn.execute(
                    q.set_study_sop_classes,
                    {"pk": study_pk, "sop_classes": "\\".join(sorted(found))},
                )
        # Full recounts last: a recounted patient sums its studies' updated counters.
        recounted = recount(conn, studies=set(skip)) if skip else set()
        for patient_pk, (n, new_series, new_studies) in sorted(self.patients.items()):
            if patient_pk in recounted:
                continue
            conn.execute(
                q.add_to_patient,
                {"pk": patient_pk, "n": n, "new_series": new_series, "new_studies": new_studies},
            )


def _conflict(
    conn: Connection,
    q: _Statements,
    outcome: WriteOutcome,
    parsed: ParsedInstance,
    patient_pk: int,
    keyword: str,
    stored: str,
    received: str,
) -> None:
    outcome.conflicts.append(keyword)
    conn.execute(
        q.insert_conflict,
        {
            "patient_pk": patient_pk,
            "sop_instance_uid": parsed.sop_instance_uid,
            "study_instance_uid": parsed.study_instance_uid,
            "attribute": keyword,
            "stored_value": stored,
            "received_value": received,
        },
    )


def recount(conn: Connection, *, studies: set[int]) -> set[int]:
    """Recompute the aggregate attributes of the given studies, their series and patients.

    Full recounts (not increments) keep them right after replace and delete too.
    """
    q = statements(conn)
    studies.discard(-1)
    patient_pks: set[int] = set()
    for study_pk in sorted(studies):  # sorted: a stable lock order on PostgreSQL
        series_rows = conn.execute(q.series_totals, {"study_pk": study_pk}).all()
        for row in series_rows:
            if row[2] != row[3]:
                conn.execute(q.update_series, {"pk": row[0], "n": row[3]})
        sop_classes = conn.execute(q.study_sop_classes, {"study_pk": study_pk}).scalars()
        modalities = sorted({r[1] for r in series_rows if r[1]})
        conn.execute(
            q.update_study,
            {
                "pk": study_pk,
                "num_series": len(series_rows),
                "num_instances": sum(r[3] for r in series_rows),
                "size_bytes": sum(r[4] for r in series_rows),
                "modalities": "\\".join(modalities),
                "sop_classes": "\\".join(sorted(sop_classes)),
            },
        )
        patient_pk = conn.execute(q.study_patients, {"pk": study_pk}).scalar()
        if patient_pk is not None:
            patient_pks.add(patient_pk)
    recount_patients(conn, patient_pks)
    return patient_pks


def recount_patients(conn: Connection, patient_pks: set[int]) -> None:
    q = statements(conn)
    for patient_pk in sorted(patient_pks):
        totals = conn.execute(q.patient_totals, {"pk": patient_pk}).one()
        conn.execute(
            q.update_patient,
            {
                "pk": patient_pk,
                "num_studies": totals[0],
                "num_series": totals[1],
                "num_instances": totals[2],
            },
        )
