"""Ingest: the one write path for instances, whatever their origin.

validate -> hash -> commit to the storage area -> sync the batch (one
flush for many files) -> index (group commit) -> publish events -> answer. C-STORE, import, and later STOW-RS,
forwarding and report objects all end up in :meth:`IngestService.ingest_staged`.

Guarantees:
* a refused instance leaves nothing behind (no file, no row);
* success is returned only once both the file and its index row are durable;
* a crash at any point leaves no index row without its file, and no
  half-written file under a key (only leftovers in staging, removed at start).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import struct
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from hilum.config import DuplicatePolicy
from hilum.dicom.jsonmodel import instance_json, pack
from hilum.dicom.parsing import ParsedInstance, parse_instance, read_header
from hilum.domain.errors import IngestFailure, IngestStatus
from hilum.domain.events import EventBus, InstanceRejected, InstanceStored
from hilum.index.models import Instance
from hilum.index.writer import IndexWrite, IndexWriter, WriteOutcome
from hilum.storage.base import StorageArea

LOG = logging.getLogger(__name__)
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class IngestResult:
    status: IngestStatus
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    message: str = ""
    series_instance_uid: str = ""

    @property
    def ok(self) -> bool:
        return self.status.ok


def storage_key_for(parsed: ParsedInstance) -> str:
    """Files of one study share a directory, so a batch fsyncs few directories."""
    study = hashlib.sha256(parsed.study_instance_uid.encode()).hexdigest()[:24]
    return f"{study[:2]}/{study[2:4]}/{study}/{uuid.uuid4().hex}.dcm"


class IngestService:
    def __init__(
        self,
        *,
        engine: Engine,
        storage: StorageArea,
        writer: IndexWriter,
        events: EventBus,
        duplicate_policy: DuplicatePolicy,
    ) -> None:
        self.engine = engine
        self.storage = storage
        self.writer = writer
        self.events = events
        self.duplicate_policy = duplicate_policy

    # -- staging --------------------------------------------------------------
    def new_staging_file(self) -> tuple[int, Path]:
        """An open (fd, path) in the staging area for a receiver to write into."""
        fd, name = tempfile.mkstemp(suffix=".part", dir=self.storage.staging_dir())
        return fd, Path(name)

    def stage_bytes(self, *parts: bytes | memoryview) -> Path:
        """Write ``parts`` to a new staging file (no fsync: the batch sync covers it)."""
        fd, staged = self.new_staging_file()
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
        except BaseException:
            os.close(fd)
            staged.unlink(missing_ok=True)
            raise
        os.close(fd)
        return staged

    def stage_copy(self, source: Path) -> Path:
        """Copy a file from outside (import) into staging; the original is untouched."""
        fd, staged = self.new_staging_file()
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                shutil.copyfileobj(src, out, _COPY_CHUNK)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return staged

    # -- the write path -------------------------------------------------------
    def is_stored(self, sop_instance_uid: str) -> bool:
        with self.engine.connect() as conn:
            return (
                conn.execute(
                    select(Instance.id).where(Instance.sop_instance_uid == sop_instance_uid)
                ).first()
                is not None
            )

    def ingest_staged(
        self,
        staged: Path,
        *,
        source: str,
        affected_sop_instance_uid: str | None = None,
        affected_sop_class_uid: str | None = None,
        policy: DuplicatePolicy | None = None,
        expected_study_uid: str | None = None,
    ) -> IngestResult:
        """Ingest a complete Part 10 file from the staging area; it is consumed either way."""
        committed_key: str | None = None
        parsed: ParsedInstance | None = None
        try:
            try:
                header = read_header(staged)
                parsed = parse_instance(header)
                dicom_json = pack(
                    instance_json(
                        header, parsed.study_instance_uid, parsed.series_instance_uid, parsed.sop_instance_uid
                    )
                )
            except IngestFailure:
                raise
            except Exception as exc:  # malformed input: pydicom raises many kinds of errors
                LOG.debug("cannot parse %s", staged, exc_info=True)
                raise IngestFailure(
                    IngestStatus.CANNOT_UNDERSTAND,
                    f"cannot parse the data set: {type(exc).__name__}: {str(exc)[:300]}",
                ) from None
            del header
            warning = ""
            # C-STORE: the stored file meta names the request's UIDs, so they must be the data set's.
            if affected_sop_instance_uid and affected_sop_instance_uid != parsed.sop_instance_uid:
                raise IngestFailure(
                    IngestStatus.CANNOT_UNDERSTAND,
                    f"Affected SOP Instance UID {affected_sop_instance_uid} does not match "
                    f"the data set's SOP Instance UID {parsed.sop_instance_uid}",
                )
            if affected_sop_class_uid and affected_sop_class_uid != parsed.sop_class_uid:
                raise IngestFailure(  # PS3.4 B.2.3: A900 Data Set does not match SOP Class
                    IngestStatus.MISSING_ATTRIBUTE,
                    f"Affected SOP Class UID {affected_sop_class_uid} does not match "
                    f"the data set's SOP Class UID {parsed.sop_class_uid}",
                )
            if expected_study_uid and expected_study_uid != parsed.study_instance_uid:
                # PS3.18 10.5: STOW-RS to /studies/{study} stores only that study's instances.
                raise IngestFailure(
                    IngestStatus.STUDY_MISMATCH,
                    f"Study Instance UID {parsed.study_instance_uid} is not the study of the "
                    f"request ({expected_study_uid})",
                )
            sha256, size = _hash(staged)
            key = storage_key_for(parsed)
            receipt = self.storage.commit(staged, key)
            committed_key = key
            future = self.writer.submit(
                IndexWrite(
                    parsed=parsed,
                    storage_key=key,
                    size=size,
                    sha256=sha256,
                    source=source,
                    receipt=receipt,
                    policy=policy or self.duplicate_policy,
                    dicom_json=dicom_json,
                )
            )
            committed_key = None  # from here the writer owns the file
            outcome: WriteOutcome = future.result()
        except IngestFailure as failure:
            if parsed is not None:
                failure.sop_class_uid = parsed.sop_class_uid
                failure.sop_instance_uid = parsed.sop_instance_uid
            self._discard(staged, committed_key)
            self.events.publish(InstanceRejected(source, str(failure), None))
            raise
        except OSError as exc:
            self._discard(staged, committed_key)
            raise IngestFailure(IngestStatus.OUT_OF_RESOURCES, f"storage error: {exc}") from exc
        except BaseException:
            self._discard(staged, committed_key)
            raise
        self.events.publish(
            InstanceStored(
                sop_instance_uid=parsed.sop_instance_uid,
                sop_class_uid=parsed.sop_class_uid,
                series_instance_uid=parsed.series_instance_uid,
                study_instance_uid=parsed.study_instance_uid,
                storage_key=key,
                size=size,
                source=source,
                status=outcome.status.reason,
                new_study=outcome.new_study,
                new_series=outcome.new_series,
            )
        )
        if outcome.conflicts:
            warning = f"patient attributes differ from the stored patient: {outcome.conflicts}"
            LOG.warning("%s (instance %s)", warning, parsed.sop_instance_uid)
        return IngestResult(
            status=outcome.status,
            sop_instance_uid=parsed.sop_instance_uid,
            sop_class_uid=parsed.sop_class_uid,
            study_instance_uid=parsed.study_instance_uid,
            message=warning,
            series_instance_uid=parsed.series_instance_uid,
        )

    def ingest_file(self, path: Path, *, source: str) -> IngestResult:
        """Ingest a file from anywhere (copied first; the original is never touched)."""
        return self.ingest_staged(self.stage_copy(path), source=source)

    def _discard(self, staged: Path, key: str | None) -> None:
        staged.unlink(missing_ok=True)
        if key is not None:
            self.storage.delete(key)


def _hash(path: Path) -> tuple[str, int]:
    return content_sha256(path), path.stat().st_size


def data_set_offset(head: bytes) -> int:
    """Where the data set starts in a Part 10 file: after preamble, DICM and group 0002.

    Uses (0002,0000) File Meta Information Group Length; 0 if the header is not
    the standard one (then the whole file is hashed).
    """
    if len(head) >= 144 and head[128:132] == b"DICM" and head[132:140] == b"\x02\x00\x00\x00UL\x04\x00":
        return 144 + struct.unpack_from("<I", head, 140)[0]
    return 0


def content_sha256(source: Path | bytes) -> str:
    """SHA-256 of an instance's data set: the file minus its Part 10 header.

    The header is Hilum's or the sender's (it names the sending AE), so two
    copies of the same instance compare equal whoever sent them.
    """
    if isinstance(source, bytes):
        return hashlib.sha256(source[data_set_offset(source[:144]) :]).hexdigest()
    digest = hashlib.sha256()
    with source.open("rb") as handle:
        head = handle.read(144)
        handle.seek(data_set_offset(head))
        while chunk := handle.read(_COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
