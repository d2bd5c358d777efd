"""`hilum export`: copy stored studies to a folder or a zip file, optionally de-identified.

Instances are selected through the index (the same query model and SQL as
C-MOVE/C-GET) and read from the storage area one at a time; each output file
is staged and only then renamed into the folder or added to the zip, so a
refused or failed instance leaves nothing behind. Layout (both kinds):
``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` with the
output's UIDs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from hilum.deid.job import DeidConfig, DeidentificationError, DeidJob
from hilum.deid.profile import Deidentifier
from hilum.deid.stream import deidentify_stream
from hilum.domain.attributes import Level
from hilum.domain.errors import HilumError
from hilum.domain.query import Query, parse_constraint
from hilum.index.search import StoredInstance, matching_instances
from hilum.storage.base import StorageArea, StorageError


@dataclass(frozen=True)
class ExportRequest:
    out: Path
    study_uids: tuple[str, ...] = ()
    patient_id: str | None = None
    deidentify: bool = False
    config: DeidConfig = field(default_factory=DeidConfig)
    mapping: Path | None = None


@dataclass
class ExportSummary:
    out: Path
    instances: int = 0
    bytes: int = 0
    studies: set[str] = field(default_factory=set)
    refused: list[tuple[str, str]] = field(default_factory=list)
    burned_in_kept: int = 0
    mapping_rows: int = 0
    job: DeidJob | None = None


def select_instances(engine: Engine, study_uids: tuple[str, ...], patient_id: str | None
                     ) -> list[StoredInstance]:
    if not study_uids and not patient_id:
        raise HilumError("say what to export: --study UID (repeatable) and/or --patient-id ID")
    query = Query(level=Level.STUDY)
    if study_uids:
        query.constraints.append(parse_constraint("StudyInstanceUID", "UI", "\\".join(study_uids)))
    if patient_id:
        if "*" in patient_id or "?" in patient_id:
            raise HilumError("--patient-id takes an exact Patient ID, not a wildcard")
        query.constraints.append(parse_constraint("PatientID", "LO", patient_id))
    with engine.connect() as conn:
        found = matching_instances(conn, query)
    missing = sorted(set(study_uids) - {i.study_instance_uid for i in found})
    if missing:
        raise HilumError(f"no stored study {missing[0]}" + (
            f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        ) + (f" for patient {patient_id}" if patient_id else ""))
    if not found:
        raise HilumError(f"no stored instance for patient {patient_id}")
    return found


class _Target:
    """A folder or a zip file receiving staged files under relative names."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.is_zip = out.suffix.lower() == ".zip"
        if self.is_zip:
            if out.exists():
                raise HilumError(f"{out} already exists; give a new file name")
            out.parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=".hilum-export-", dir=out.parent))
            self.zip: zipfile.ZipFile | None = zipfile.ZipFile(
                out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True
            )
        else:
            if out.exists() and (not out.is_dir() or any(out.iterdir())):
                raise HilumError(f"{out} is not an empty folder; give a new or empty one")
            out.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=".hilum-export-", dir=out))
            self.zip = None

    def staged(self) -> Path:
        fd, name = tempfile.mkstemp(suffix=".part", dir=self.staging)
        os.close(fd)
        return Path(name)

    def place(self, staged: Path, name: str) -> None:
        if self.zip is not None:
            self.zip.write(staged, name)
            staged.unlink()
        else:
            final = self.out / name
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)

    def close(self, *, ok: bool) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.zip is not None:
            self.zip.close()
            if not ok:
                self.out.unlink(missing_ok=True)


def run_export(
    engine: Engine,
    storage: StorageArea,
    request: ExportRequest,
    *,
    on_item: Callable[[StoredInstance, int], None] | None = None,
) -> ExportSummary:
    """Export the selected instances; return what was written and what was refused."""
    if request.mapping is not None and not request.deidentify:
        raise HilumError("--mapping only makes sense with --deidentify")
    instances = select_instances(engine, request.study_uids, request.patient_id)
    job = DeidJob.create(request.config) if request.deidentify else None
    deid = Deidentifier(job) if job is not None else None
    summary = ExportSummary(out=request.out, job=job)
    target = _Target(request.out)
    ok = False
    try:
        for instance in instances:
            staged = target.staged()
            try:
                size, study = _export_one(storage, instance, staged, deid, summary)
            except DeidentificationError as exc:
                staged.unlink(missing_ok=True)
                summary.refused.append((instance.sop_instance_uid, str(exc)))
                continue
            except (OSError, StorageError) as exc:
                staged.unlink(missing_ok=True)
                raise HilumError(f"cannot export {instance.sop_instance_uid}: {exc}") from None
            out_uid = job.output_uid if job is not None else (lambda uid: uid)
            name = (f"{out_uid(instance.study_instance_uid)}/{out_uid(instance.series_instance_uid)}/"
                    f"{out_uid(instance.sop_instance_uid)}.dcm")
            target.place(staged, name)
            summary.instances += 1
            summary.bytes += size
            summary.studies.add(study)
            if on_item is not None:
                on_item(instance, size)
        ok = summary.instances > 0
    finally:
        target.close(ok=ok)
    if job is not None and request.mapping is not None and summary.instances:
        summary.mapping_rows = job.write_mapping(request.mapping)
    return summary


def _export_one(storage: StorageArea, instance: StoredInstance, staged: Path,
                deid: Deidentifier | None, summary: ExportSummary) -> tuple[int, str]:
    with storage.open(instance.storage_key) as src, staged.open("wb") as dst:
        if deid is None:
            shutil.copyfileobj(src, dst, 1 << 20)
            return dst.tell(), instance.study_instance_uid
        result = deidentify_stream(src, dst, deid)
    if result.burned_in:
        summary.burned_in_kept += 1
    return result.bytes_written, result.study_instance_uid
