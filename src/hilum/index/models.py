"""SQLAlchemy models of the index: the patient -> study -> series -> instance tree.

Column names come from :mod:`hilum.domain.attributes`; only the bookkeeping
columns (keys, counters, storage attachment, timestamps) are named here. The
index never holds pixel data: an instance row points at its file in the
storage area by ``storage_key`` and records its size and SHA-256.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    false,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hilum.domain.attributes import STORED, Level

# BIGINT on PostgreSQL, INTEGER (= rowid alias, autoincrement) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


def _columns_mixin(level: Level, *explicit: str) -> type:
    """A declarative mixin with one column per stored attribute of ``level``.

    Columns named in ``explicit`` are declared by hand on the model (to add an
    index or a tighter type) and are skipped here.
    """
    namespace: dict[str, object] = {}
    annotations: dict[str, object] = {}
    for attr in STORED[level]:
        if attr.column in explicit:
            continue
        if attr.vr in ("IS", "US"):
            namespace[attr.column] = mapped_column(Integer, nullable=True)
            annotations[attr.column] = Mapped[int | None]
        else:
            kind = String(64) if attr.vr == "UI" else String(8) if attr.vr == "DA" else Text
            namespace[attr.column] = mapped_column(kind, nullable=True)
            annotations[attr.column] = Mapped[str | None]
    namespace["__annotations__"] = annotations
    return type(f"_{level.value.title()}Columns", (), namespace)


class Patient(_columns_mixin(Level.PATIENT, "patient_id", "patient_name"), Base):  # type: ignore[misc]
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # PatientID + IssuerOfPatientID, or a synthetic key when PatientID is empty.
    patient_key: Mapped[str] = mapped_column(Text, unique=True)
    patient_id: Mapped[str] = mapped_column(Text, index=True, default="")
    patient_name: Mapped[str | None] = mapped_column(Text)
    patient_name_key: Mapped[str | None] = mapped_column(Text, index=True)
    num_studies: Mapped[int] = mapped_column(Integer, default=0)
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Study(_columns_mixin(Level.STUDY, "study_instance_uid", "study_date", "accession_number"), Base):  # type: ignore[misc]
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_date: Mapped[str | None] = mapped_column(String(8), index=True)
    accession_number: Mapped[str | None] = mapped_column(Text, index=True)
    referring_physician_name_key: Mapped[str | None] = mapped_column(Text)
    modalities_in_study: Mapped[str] = mapped_column(Text, default="")
    sop_classes_in_study: Mapped[str] = mapped_column(Text, default="")
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Reading status (hilum.index.reading): unread | in_progress | read, a string checked in
    # code so that later statuses (preliminary, final) need no schema change; who set it
    # (NULL when unread) and when it last changed.
    reading_status: Mapped[str] = mapped_column(String(16), server_default="unread")
    reading_user: Mapped[str | None] = mapped_column(Text, nullable=True)
    reading_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Series(_columns_mixin(Level.SERIES, "series_instance_uid", "modality"), Base):  # type: ignore[misc]
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str | None] = mapped_column(Text, index=True)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Instance(_columns_mixin(Level.IMAGE, "sop_instance_uid", "sop_class_uid"), Base):  # type: ignore[misc]
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    # The attachment in the storage area.
    storage_key: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    # Where it came from: "dimse:<calling AE>@<host>", "stow", "import", ...
    source: Mapped[str] = mapped_column(Text, default="")
    # The instance's DICOM JSON model (zlib-compressed), prepared at ingest for WADO-RS
    # metadata and QIDO-RS on attributes without a column; NULL until backfilled.
    dicom_json: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PatientConflict(Base):
    """An instance whose patient attributes disagree with the stored patient (for QC)."""

    __tablename__ = "patient_conflicts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    attribute: Mapped[str] = mapped_column(Text)
    stored_value: Mapped[str] = mapped_column(Text)
    received_value: Mapped[str] = mapped_column(Text)
    resolved: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Change(Base):
    """The change feed: one row per stored / replaced / deleted resource, in order."""

    __tablename__ = "changes"
    # Never reuse a sequence number, even after the newest row is deleted.
    __table_args__ = {"sqlite_autoincrement": True}

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # stored | replaced | deleted
    level: Mapped[str] = mapped_column(String(8))
    resource_uid: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class RemoteNode(Base):
    """A known remote AE (C-MOVE destination, SCU target)."""

    __tablename__ = "remote_aes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    ae_title: Mapped[str] = mapped_column(String(16), index=True)
    host: Mapped[str] = mapped_column(Text)
    port: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text, default="")
    # Comma-separated services the node may use on Hilum: store, find, move, get.
    permissions: Mapped[str] = mapped_column(
        Text, default="store,find,move,get", server_default="store,find,move,get"
    )
    tls: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CommitmentRequest(Base):
    """A Storage Commitment transaction (PS3.4 J), kept until its report is delivered."""

    __tablename__ = "commitment_requests"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    transaction_uid: Mapped[str] = mapped_column(String(64), index=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | sent | failed
    # The Referenced SOP Sequence of the request: [[class UID, instance UID], ...] as JSON.
    references_json: Mapped[str] = mapped_column(Text, default="[]")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


Index("ix_studies_patient_date", Study.patient_pk, Study.study_date)
# Worklists: filter by reading status, newest (or oldest) first within it.
Index(
    "ix_studies_reading_status_date", Study.reading_status, Study.study_date, Study.__table__.c.study_time
)
# The study lists' default order, newest first (migration 0011; PostgreSQL only: SQLite
# reads the plain date index backwards, and has no NULLS LAST in indexes).
Index(
    "ix_studies_newest_first",
    Study.study_date.desc().nulls_last(),
    Study.__table__.c.study_time.desc().nulls_last(),
    Study.id,
).ddl_if(dialect="postgresql")
Index("ix_patients_birth_date", Patient.__table__.c.patient_birth_date)
Index("ix_series_study_modality", Series.study_pk, Series.modality)
Index("ix_instances_series_number", Instance.series_pk, Instance.__table__.c.instance_number)


def table_of(model: type[Base]) -> Table:
    """The Core table of a model, typed as a Table (for insert/update/delete)."""
    return cast(Table, model.__table__)


patients_t = table_of(Patient)
studies_t = table_of(Study)
series_t = table_of(Series)
instances_t = table_of(Instance)
conflicts_t = table_of(PatientConflict)
changes_t = table_of(Change)
remote_aes_t = table_of(RemoteNode)
commitments_t = table_of(CommitmentRequest)


class Job(Base):
    """A durable job (C-STORE to a remote AE, or C-MOVE from one), run step by step.

    ``state_json`` is the serialized step state (what was handled, what must be
    resent), saved with the progress counters so a restart resumes the job.
    """

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # store | move
    # queued | running | succeeded | failed | cancelled
    state: Mapped[str] = mapped_column(String(16), index=True)
    source: Mapped[str | None] = mapped_column(String(64), nullable=True)  # move: remote AE name
    destination: Mapped[str] = mapped_column(String(64))  # store: remote AE name; move: AE title
    params_json: Mapped[str] = mapped_column(Text, default="{}")  # the request
    state_json: Mapped[str] = mapped_column(Text, default="{}")
    total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    retry_delay: Mapped[float] = mapped_column(Float, default=10.0)  # seconds, doubled per attempt
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The Hilum node running it, and when it last said so (stale = crashed node).
    owner: Mapped[str | None] = mapped_column(Text, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


jobs_t = table_of(Job)

# Registers the auth tables in Base.metadata (migrations compare against it).
from hilum.auth import models as _auth_models  # noqa: E402, F401
from hilum.shares import models as _share_models  # noqa: E402, F401
